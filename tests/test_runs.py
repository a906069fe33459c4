"""Run folders as a researcher sees them (workbench.runs): labels that tell runs apart, the
runs under a root, the run a config resumes, and deleting; and the pre-start estimate."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny

from workbench import Config, run_experiment
from workbench.events import EPOCH_END, PROGRESS
from workbench.records import RunFolderError, RunLock
from workbench.runs import (
    delete_run,
    find_resumable,
    find_same_config,
    list_runs,
    run_labels,
    varying_fields,
)
from workbench.training.estimate import prior_estimate


def test_labels_name_only_the_fields_that_differ():
    a, b = Config(aux_depth=1).to_dict(), Config(aux_depth=3).to_dict()
    a["out"], b["out"] = "runs/x", "runs/y"  # where a run lives tells nothing about it
    b["allow_modified_copy"] = True  # nor does how its data was read
    assert run_labels([a, b]) == ["aux_depth=1", "aux_depth=3"]


def test_labels_put_the_telling_fields_first_and_stay_short():
    base = dict(Config().to_dict())
    configs = [
        {**base, "lr": 0.1, "seed": 1, "width": 8, "momentum": 0.5, "method": "sequential"},
        {**base, "lr": 0.2, "seed": 2, "width": 16, "momentum": 0.9, "method": "parallel"},
    ]
    labels = run_labels(configs)
    assert labels[0].startswith("method=sequential, seed=1")  # readers look for these first
    assert labels[0].endswith("+2")  # five fields differ: three shown, two counted
    assert all(len(text) < 60 for text in labels)
    assert varying_fields(configs)[:2] == ["method", "seed"]


def test_labels_are_unique_and_a_lone_run_is_named_by_its_net():
    config = Config(arch="resnet20", method="parallel").to_dict()
    assert run_labels([config]) == ["resnet20 parallel"]
    twins = run_labels([config, dict(config)], ["runs/a", "runs/b"])
    assert twins == ["resnet20 parallel (a)", "resnet20 parallel (b)"]


def test_list_runs_find_resumable_and_delete(tmp_path):
    root = tmp_path / "runs"
    first = run_experiment(tiny(tmp_path, out=str(root / "k1"), aux_depth=1))
    run_experiment(tiny(tmp_path, out=str(root / "k3"), aux_depth=3))
    rows = list_runs(root)
    by_label = {r["label"]: r for r in rows}
    assert set(by_label) == {"aux_depth=1", "aux_depth=3"}
    assert by_label["aux_depth=1"]["status"] == "finished"
    assert by_label["aux_depth=1"]["per_module_test_acc"] == first["per_module_test_acc"]
    assert by_label["aux_depth=1"]["wall_time_s"] > 0

    # the same config with `out` empty is recognised; a finished run is not resumable
    same = tiny(tmp_path, out="", aux_depth=1)
    assert find_same_config(root, same) == [(root / "k1", "finished")]
    assert find_resumable(root, same) is None
    assert find_same_config(root, tiny(tmp_path, out="", aux_depth=2)) == []

    with RunLock(root / "k1"):  # a run in progress is not deleted
        with pytest.raises(RunFolderError, match="in use"):
            delete_run(root / "k1")
    with pytest.raises(RunFolderError, match="not a run folder"):
        delete_run(tmp_path)
    delete_run(root / "k1")
    assert [r["run_dir"] for r in list_runs(root)] == [str(root / "k3")]


def test_an_interrupted_or_stopped_run_is_resumable(tmp_path):
    import threading

    root = tmp_path / "runs"
    stop = threading.Event()

    def stop_after_first_epoch(event, info):
        if event == EPOCH_END:
            stop.set()

    config = tiny(tmp_path, out=str(root / "a"), n_modules=3)
    summary = run_experiment(config, callbacks=[stop_after_first_epoch], stop=stop)
    assert summary["status"] == "stopped"
    assert find_resumable(root, config.replace(out="")) == root / "a"


def test_progress_comes_inside_the_first_epoch(tmp_path):
    events = []
    run_experiment(
        tiny(tmp_path, n_train=1024, batch_size=32), callbacks=[lambda e, i: events.append((e, i))]
    )
    names = [e for e, _ in events]
    first = names.index(PROGRESS)
    assert first < names.index(EPOCH_END)  # the bar moves before the first point
    info = events[first][1]
    assert info["step"] == 1 and info["steps"] == 32
    assert info["seconds_left"] > 0 and info["images_per_s"] > 0


def test_the_prior_estimate_grows_with_the_work_and_is_none_for_unknown_sizes():
    cpu = torch.device("cpu")
    small = prior_estimate(Config(dataset="cifar10", n_train=1000, epochs=1), cpu)
    large = prior_estimate(Config(dataset="cifar10", epochs=50, arch="vgg11"), cpu)
    assert small is not None and large is not None
    assert large > 1000 * small
    # full CIFAR-10, VGG-11, 50 epochs per module: hours on any CPU (3.1 h at the 390 GFLOP/s
    # this 2-core AMX Xeon measures; 46 h on the 2-core AVX2 one before it)
    assert large > 3600
    assert prior_estimate(Config(dataset="imagefolder", data_dir="/nowhere"), cpu) is None
