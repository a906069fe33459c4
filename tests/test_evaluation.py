"""Evaluation is done once per change and reports what a full evaluation would.

Each test trains a small run, then checks its numbers against an evaluation from scratch
(the trained modules loaded from their checkpoints, every head, test batches of the training
size: how every evaluation ran before they were reused), or counts the test images each module
and head actually saw.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny

from workbench import run_experiment
from workbench.data import Batches, load_data
from workbench.metrics import evaluate
from workbench.models import build_model
from workbench.records import RunDir
from workbench.summary import Summary
from workbench.training import Trainer
from workbench.training.device import memory_format

CPU = torch.device("cpu")


def trained_model(config):
    """The run's final model, from its module checkpoints."""
    model = build_model(config)
    for k in range(config.n_modules):
        state = torch.load(Path(config.out) / f"checkpoints/module_{k + 1}.pt")
        model.trunk[k].load_state_dict(state["trunk"])
        model.heads[k].load_state_dict(state["head"])
    return model


@pytest.mark.parametrize(
    "fields",
    [
        dict(method="sequential", n_modules=3, epochs=2),
        dict(method="sequential", n_modules=3, epochs=2, augment="none", cache_features=True),
        dict(method="parallel", arch="resnet20", n_modules=3, epochs=2),
        dict(method="multilap", n_modules=2, epochs=2, laps=2),
    ],
    ids=["sequential", "cached", "parallel", "multilap"],
)
def test_the_summary_equals_a_full_evaluation_from_scratch(tmp_path, fields):
    config = tiny(tmp_path, n_train=512, n_test=300, **fields)
    summary = run_experiment(config)
    assert summary["eval_batch_size"] == config.batch_size  # on the CPU: in-cache batches
    data = load_data(config)
    test = Batches(
        data.test_x,
        data.test_y,
        batch_size=config.batch_size,
        device=CPU,
        mean=data.mean,
        std=data.std,
    )
    layout = memory_format(config, CPU)  # as the run computed, NHWC for plain trunks
    model = trained_model(config).to(memory_format=layout)
    full = evaluate(model, ((x.contiguous(memory_format=layout), y) for x, y in test))
    assert summary["per_module_test_acc"] == full.per_module_acc
    assert summary["per_module_test_top5"] == full.per_module_top5
    assert summary["ensemble_test_acc"] == full.ensemble_acc
    assert summary["final_test_acc"] == full.per_module_acc[-1]
    assert summary["final_test_acc"] > 0.3  # learned: chance is 0.1


@pytest.mark.parametrize("kept", [True, False], ids=["outputs-kept", "not-kept"])
def test_a_sequential_run_evaluates_each_frozen_module_once(tmp_path, monkeypatch, kept):
    """Test images through each head and module: a head only in its own phase's epochs (never
    when frozen, nor again for the summary); a module too, since its last evaluation's outputs
    are the next phase's inputs. When they would not fit in memory, the next phase runs the
    frozen prefix once instead (test_recipes checks that the numbers are the same)."""
    if not kept:
        monkeypatch.setattr(Trainer, "keeps_outputs", lambda self, phase, epoch: False)
    n_modules, epochs, n_test = 3, 2, 200
    config = tiny(tmp_path, n_modules=n_modules, epochs=epochs, n_test=n_test)
    data = load_data(config)
    model = build_model(config)
    seen = {("head", k): 0 for k in range(n_modules)} | {("trunk", k): 0 for k in range(n_modules)}

    def counter(key):
        def hook(module, inputs, output):
            if torch.is_inference_mode_enabled():  # evaluation's mode, and only evaluation's
                seen[key] += len(inputs[0])

        return hook

    for k in range(n_modules):
        model.heads[k].register_forward_hook(counter(("head", k)))
        model.trunk[k].register_forward_hook(counter(("trunk", k)))
    with RunDir.open(config) as run:
        trainer = Trainer(config, run, model, data, CPU)
        trainer.fit(Summary())
        final = trainer.final_summary()
    for k in range(n_modules):
        prefix_runs = 0 if kept else n_modules - 1 - k  # once per later phase
        assert seen["head", k] == epochs * n_test, f"head {k + 1}"
        assert seen["trunk", k] == (epochs + prefix_runs) * n_test, f"module {k + 1}"
    assert final["per_module_test_acc"] == [trainer.test_acc[k + 1] for k in range(n_modules)]


def test_evaluation_keeps_the_last_modules_outputs_only_within_its_budget():
    torch.manual_seed(0)
    config = tiny(Path("unused"), n_modules=2)
    model = build_model(config).eval()
    batches = [(torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))) for _ in range(3)]
    with torch.inference_mode():
        expected = [model.trunk[1](model.trunk[0](x)) for x, _ in batches]
    one_batch = expected[0].numel() * expected[0].element_size()
    kept = evaluate(model, batches, keep_outputs=3 * one_batch).outputs
    assert kept is not None and len(kept) == 3
    for (out, y), want, (_, labels) in zip(kept, expected, batches):
        assert torch.equal(out, want) and torch.equal(y, labels)
    assert evaluate(model, batches, keep_outputs=3 * one_batch - 1).outputs is None
    assert evaluate(model, batches).outputs is None  # not asked for


def test_a_resumed_run_without_kept_logits_evaluates_in_full(tmp_path):
    """A run resumed after its last epoch has no logits of the earlier session: the summary
    comes from one full evaluation, and equals the unbroken run's."""
    config = tiny(tmp_path, n_modules=2, epochs=2)
    unbroken = run_experiment(config.replace(out=str(tmp_path / "unbroken")))
    data = load_data(config)
    with RunDir.open(config) as run:
        trainer = Trainer(config, run, build_model(config), data, CPU)
        trainer.fit(Summary())
    with RunDir.open(config) as run:  # a new process would see only the checkpoints
        resumed = Trainer(config, run, build_model(config), data, CPU)
        resumed.fit(Summary())
        assert resumed.test_logits == {}
        final = resumed.final_summary()
    assert final["per_module_test_acc"] == unbroken["per_module_test_acc"]
    assert final["ensemble_test_acc"] == unbroken["ensemble_test_acc"]


def test_the_summary_splits_the_run_time_into_its_parts(tmp_path):
    summary = run_experiment(tiny(tmp_path, n_modules=2, epochs=2))
    split = summary["time_split_s"]
    parts = ("data", "train", "evaluate", "precise_bn", "callbacks", "checkpoints", "other")
    assert set(split) == {*parts, "total"}
    assert all(split[p] >= 0 for p in parts if p != "other")
    assert split["train"] > 0 and split["evaluate"] > 0 and split["checkpoints"] > 0
    assert sum(split[p] for p in parts) == pytest.approx(split["total"], abs=1e-3)
    assert split["total"] >= summary["wall_time_s"] * 0.9
