"""Training methods on tiny real data (the embedded digits), on the CPU."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from conftest import tiny

from workbench import run_experiment
from workbench.events import EPOCH_END, MODULE_DONE, RUN_END, RUN_START
from workbench.local import LocalLearner
from workbench.records import read_metrics
from workbench.training import Trainer, plan


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_sequential_freezes_finished_modules(tmp_path, trainers):
    """Module 1's weights and BN statistics do not move while modules 2 and 3 train."""
    snapshots: list[list[dict]] = []  # at each MODULE_DONE: every module's state

    def on_event(event, info):
        if event == MODULE_DONE:
            snapshots.append([_state(m) for m in trainers[0].model.trunk])

    config = tiny(tmp_path, n_modules=3, epochs=2, width=8)
    summary = run_experiment(config, callbacks=[on_event])
    assert summary["status"] == "finished" and len(snapshots) == 3

    def same(a: dict, b: dict) -> bool:
        return all(torch.equal(a[n], b[n]) for n in a)

    # module 1 after its own training == after module 2's == after module 3's
    assert same(snapshots[0][0], snapshots[1][0]) and same(snapshots[0][0], snapshots[2][0])
    assert same(snapshots[1][1], snapshots[2][1])  # module 2 frozen while module 3 trains
    assert not same(snapshots[0][1], snapshots[1][1])  # but module 2 did train in its turn
    assert not same(snapshots[1][2], snapshots[2][2])


def test_sequential_uses_a_fresh_optimizer_per_module(tmp_path):
    config = tiny(tmp_path, n_modules=3)
    phases = plan(config)
    assert [p.modules for p in phases] == [(0,), (1,), (2,)]
    assert [p.frozen_prefix for p in phases] == [0, 1, 2]


def test_parallel_no_gradient_crosses_a_module_boundary(tmp_path, monkeypatch):
    """Each parameter receives exactly one gradient per batch: its own module's loss.

    Were an output not detached, module k+1's backward would reach module k's parameters
    a second time in the same step.
    """
    grads_per_param: dict[str, int] = {}
    inputs_requiring_grad: list[bool] = []
    original_init = Trainer.__init__

    def spy_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        for name, p in self.model.named_parameters():
            grads_per_param[name] = 0
            p.register_hook(
                lambda g, name=name: grads_per_param.__setitem__(name, grads_per_param[name] + 1)
            )
        for module in list(self.model.trunk)[1:]:
            module.register_forward_pre_hook(
                lambda m, args: inputs_requiring_grad.append(args[0].requires_grad)
            )

    monkeypatch.setattr(Trainer, "__init__", spy_init)
    config = tiny(
        tmp_path,
        arch="resnet20",
        n_modules=3,
        method="parallel",
        regularization="kinetic",
        n_train=192,
        batch_size=64,
    )
    summary = run_experiment(config)
    assert summary["status"] == "finished"
    n_batches = 3
    trunk_params = {n: c for n, c in grads_per_param.items() if n.startswith("trunk.")}
    assert set(trunk_params.values()) == {n_batches}
    # training-time inputs of modules 2 and 3 never carry a graph (eval passes are no-grad too)
    assert inputs_requiring_grad and not any(inputs_requiring_grad)


def test_end_to_end_backprop_reaches_the_first_module_but_probes_do_not(tmp_path, monkeypatch):
    """End-to-end: module 1's update is exactly -lr x grad of the last head's loss alone.

    With plain SGD (no momentum, no weight decay) the parameter change is the gradient; the
    read-out heads of modules 1..K-1 train on detached features, so they add nothing to it.
    """
    checked: list[float] = []
    original_step = LocalLearner.step

    def spy_step(self, inputs, lr):
        assert self.joint and self.modules == (0, 1, 2)  # one learner: the phase is joint
        params = list(self.trunk[0].parameters())
        before = [p.detach().clone() for p in params]
        x = inputs.x
        for module in self.trunk:
            x = module(x)
        main_loss = torch.nn.functional.cross_entropy(self.heads[-1](x), inputs.y)
        reference = torch.autograd.grad(main_loss, params)
        result = original_step(self, inputs, lr)
        for p, b, g in zip(params, before, reference):
            assert torch.allclose(b - p.detach(), lr * g, atol=1e-6, rtol=1e-4)
        checked.append(sum(g.abs().sum().item() for g in reference))
        return result

    monkeypatch.setattr(LocalLearner, "step", spy_step)
    config = tiny(
        tmp_path,
        method="end-to-end",
        n_modules=3,
        n_train=128,
        momentum=0.0,
        weight_decay=0.0,
        lr_schedule="constant",
        batchnorm=False,
    )
    summary = run_experiment(config)
    assert summary["status"] == "finished"
    assert len(checked) == 2 and min(checked) > 0  # gradient did reach module 1
    assert len(summary["per_module_test_acc"]) == 3


FAMILIES = ["greedy-cnn", "resnet20", "resnet18", "vgg11"]
METHODS = ["sequential", "parallel", "multilap", "end-to-end"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", FAMILIES)
def test_every_method_and_architecture_records_per_module_accuracy(tmp_path, arch, method):
    epochs = 2 if method == "multilap" else 1
    config = tiny(
        tmp_path,
        arch=arch,
        method=method,
        n_modules=3,
        epochs=epochs,
        laps=2,
        width=8 if arch != "resnet18" else 4,
    )
    events: list[str] = []
    summary = run_experiment(config, callbacks=[lambda e, info: events.append(e)])
    run = tmp_path / "run"
    assert summary["status"] == "finished"
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["per_module_test_acc"] == summary["per_module_test_acc"]
    accs = summary["per_module_test_acc"]
    assert len(accs) == 3 and all(0.0 <= a <= 1.0 for a in accs)
    assert 0.0 <= summary["ensemble_test_acc"] <= 1.0
    rows = read_metrics(run)
    assert {r["module"] for r in rows if r["split"] == "test"} == {1, 2, 3}
    assert all({"loss", "acc", "lr", "epoch"} <= set(r) for r in rows)
    assert all("images_per_s" in r and "seconds" in r for r in rows if r["split"] == "train")
    assert sorted(p.name for p in (run / "checkpoints").glob("module_*.pt")) == [
        "module_1.pt",
        "module_2.pt",
        "module_3.pt",
    ]
    assert events[0] == RUN_START and events[-1] == RUN_END
    assert events.count(MODULE_DONE) == 3 * (2 if method == "multilap" else 1)
    expected_epochs = 3 * epochs if method in ("sequential", "multilap") else epochs
    assert events.count(EPOCH_END) == expected_epochs


def test_multilap_visits_every_module_on_every_lap(tmp_path):
    config = tiny(tmp_path, method="multilap", n_modules=3, epochs=3, laps=2)
    phases = plan(config)
    assert [(p.lap, p.modules, p.epochs) for p in phases] == [
        (0, (0,), 2),
        (0, (1,), 2),
        (0, (2,), 2),
        (1, (0,), 1),
        (1, (1,), 1),
        (1, (2,), 1),
    ]
    assert [p.first_epoch for p in phases] == [0, 0, 0, 2, 2, 2]


def test_parallel_resnet_with_kinetic_term_learns(tmp_path):
    """DGL + TRGL's regularizer on a ResNet-20 learns the digits well above chance (10%)."""
    config = tiny(
        tmp_path,
        arch="resnet20",
        n_modules=3,
        method="parallel",
        regularization="kinetic",
        tau=1.0,
        n_train=1500,
        n_test=500,
        epochs=3,
        width=8,
        lr=0.05,
    )
    summary = run_experiment(config)
    accs = summary["per_module_test_acc"]
    assert min(accs) > 0.5, accs
    assert summary["ensemble_test_acc"] > 0.5


def test_stop_flag_leaves_a_readable_stopped_run(tmp_path):
    stop = threading.Event()

    def on_event(event, info):
        if event == EPOCH_END and info["global_epoch"] == 2:
            stop.set()

    config = tiny(tmp_path, n_modules=4)
    summary = run_experiment(config, callbacks=[on_event], stop=stop)
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == on_disk["status"] == "stopped"
    assert on_disk["modules_finished"] == 2
    assert len(on_disk["per_module_test_acc"]) == 2
    assert len(read_metrics(tmp_path / "run")) == 4  # train + test rows of two epochs


def test_resume_continues_from_the_last_finished_module(tmp_path):
    stop = threading.Event()

    def stop_after_module_2(event, info):
        if event == MODULE_DONE and info["module"] == 2:
            stop.set()

    config = tiny(tmp_path, n_modules=4, epochs=2)
    first = run_experiment(config, callbacks=[stop_after_module_2], stop=stop)
    assert first["status"] == "stopped" and first["modules_finished"] == 2
    module_1 = torch.load(tmp_path / "run/checkpoints/module_1.pt")["trunk"]

    events: list[tuple[str, dict]] = []
    second = run_experiment(config, callbacks=[lambda e, info: events.append((e, info))])
    assert second["status"] == "finished"
    assert second["resumed_from"] == {"phase": 2, "epochs_done": 0}
    trained = [info["modules"] for e, info in events if e == EPOCH_END]
    assert trained == [[3], [3], [4], [4]]  # modules 1-2 were not retrained
    assert events[0][1]["epochs_done"] == 4
    resumed_module_1 = torch.load(tmp_path / "run/checkpoints/module_1.pt")["trunk"]
    assert all(torch.equal(resumed_module_1[k], v) for k, v in module_1.items())
    rows = read_metrics(tmp_path / "run")
    assert [r["global_epoch"] for r in rows if r["split"] == "test"] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert len(second["per_module_test_acc"]) == 4

    # a finished run is reported, not retrained
    later: list[str] = []
    third = run_experiment(config, callbacks=[lambda e, info: later.append(e)])
    assert later == []
    assert third["per_module_test_acc"] == second["per_module_test_acc"]


def test_a_resumed_run_ends_exactly_where_an_unbroken_one_does(tmp_path):
    """Weights, optimizer state, data order and augmentation all continue where they stopped."""
    stop = threading.Event()

    def stop_mid_module_2(event, info):
        if event == EPOCH_END and info["global_epoch"] == 3:
            stop.set()

    config = tiny(tmp_path, n_modules=3, epochs=2, augment="crop-flip")
    unbroken = run_experiment(config.replace(out=str(tmp_path / "unbroken")))
    assert run_experiment(config, callbacks=[stop_mid_module_2], stop=stop)["status"] == "stopped"
    resumed = run_experiment(config)
    assert resumed["resumed_from"] == {"phase": 1, "epochs_done": 1}
    assert resumed["per_module_test_acc"] == unbroken["per_module_test_acc"]
    a = torch.load(tmp_path / "unbroken/checkpoints/module_3.pt")["trunk"]
    b = torch.load(tmp_path / "run/checkpoints/module_3.pt")["trunk"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_mid_module_restarts_after_the_last_finished_epoch(tmp_path):
    stop = threading.Event()

    def stop_after_first_epoch(event, info):
        if event == EPOCH_END and info["global_epoch"] == 1:
            stop.set()

    config = tiny(tmp_path, n_modules=2, epochs=3)
    assert run_experiment(config, callbacks=[stop_after_first_epoch], stop=stop)["status"] == (
        "stopped"
    )
    epochs: list[int] = []
    second = run_experiment(
        config, callbacks=[lambda e, i: epochs.append(i["global_epoch"]) if e == EPOCH_END else 0]
    )
    assert second["status"] == "finished"
    assert epochs == [2, 3, 4, 5, 6]


def test_a_failing_run_is_recorded_as_failed(tmp_path):
    def explode(event, info):
        if event == EPOCH_END:
            raise RuntimeError("callback broke")

    config = tiny(tmp_path, n_modules=2)
    with pytest.raises(RuntimeError, match="callback broke"):
        run_experiment(config, callbacks=[explode])
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["status"] == "failed"
    assert "callback broke" in on_disk["error"]
    assert len(read_metrics(tmp_path / "run")) == 2  # the finished epoch stays readable


def test_probe_measures_separability_per_module(tmp_path):
    config = tiny(tmp_path, n_modules=3, probe=True, n_train=512, n_test=256, epochs=2)
    summary = run_experiment(config)
    probes = summary["per_module_probe_acc"]
    assert len(probes) == 3
    assert min(probes) > 0.3  # linear read-outs of trained features beat chance (0.1)


def test_module_checkpoints_rebuild_the_recorded_accuracies(tmp_path):
    """module_<k>.pt holds what is needed to rebuild module k and its head."""
    from workbench.data import load_data, make_batches
    from workbench.metrics import evaluate
    from workbench.models import build_model

    config = tiny(tmp_path, n_modules=2)
    summary = run_experiment(config)
    model = build_model(config.replace(seed=config.seed + 1))  # different initial weights
    for k in range(2):
        saved = torch.load(tmp_path / f"run/checkpoints/module_{k + 1}.pt")
        model.trunk[k].load_state_dict(saved["trunk"])
        model.heads[k].load_state_dict(saved["head"])
    _, test = make_batches(load_data(config), config, torch.device("cpu"))
    assert evaluate(model, test).per_module_acc == summary["per_module_test_acc"]
