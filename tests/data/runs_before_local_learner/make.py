"""How these run folders were made: with the workbench as it was before the local learner
(commit 8461887), `PYTHONPATH=<that checkout> python make.py OUT`: each run stopped part way
(last.pt, and the sequential run's module_1.pt), and an unbroken run of the same config
whose per-module test accuracies are in unbroken.json. tests/test_local.py resumes them."""

import sys

from workbench import Config, run_experiment
from workbench.events import EPOCH_END

out = sys.argv[1]
common = dict(dataset="mnist-5k", n_train=256, n_test=128, batch_size=64, width=8, device="cpu")
for name, fields in {
    "sequential": dict(method="sequential", n_modules=2, epochs=2),
    "end-to-end": dict(
        method="end-to-end",
        n_modules=2,
        epochs=2,
        arch="resnet",
        n_units=3,
        regularization="kinetic",
    ),  # fmt: skip
}.items():
    config = Config(**common, **fields, out=f"{out}/{name}")
    stop_after = {"sequential": 3, "end-to-end": 1}[name]

    def stop(event, info, stop_after=stop_after):
        if event == EPOCH_END and info["global_epoch"] == stop_after:
            raise KeyboardInterrupt

    summary = run_experiment(config, callbacks=[stop])
    print(name, summary["status"], summary["per_module_test_acc"])
    unbroken = run_experiment(config.replace(out=f"{out}/unbroken-{name}"))
    print("unbroken", name, unbroken["status"], unbroken["per_module_test_acc"])
