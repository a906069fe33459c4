"""The local learner, its objectives and heads as registries, the kinetic term, and end-to-end
as a plan; run folders written before them resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny

from workbench import Config, ConfigError, run_experiment
from workbench.config import AUX_TYPES, FIELD_CHOICES, LAST_AUX_TYPES
from workbench.local import LocalInputs, LocalLearner, kinetic
from workbench.local.objectives import OBJECTIVES, objective_class
from workbench.models import build_model
from workbench.models.heads import FAMILIES, HeadSpec, build_head
from workbench.training.device import choose_precision
from workbench.training.methods import plan

OLD_RUNS = Path(__file__).parent / "data" / "runs_before_local_learner"


def test_objectives_and_head_families_come_from_their_files():
    folder = Path(objective_class("cross-entropy").__module__.replace(".", "/")).parent
    files = {p.stem.replace("_", "-") for p in (Path(__file__).parents[1] / folder).glob("*.py")}
    assert set(OBJECTIVES) == files - {"--init--"} and OBJECTIVES[0] == "cross-entropy"
    assert FIELD_CHOICES["objective"] == OBJECTIVES
    assert AUX_TYPES == ("cnn", "mlp", "mlp-sr", "1cnn")  # the order users have seen
    assert LAST_AUX_TYPES == ("same", *AUX_TYPES, "vgg")
    assert all(f.DEPTH and f.NAME == name for name, f in FAMILIES.items())
    with pytest.raises(ConfigError) as e:
        Config(objective="hinge")
    assert str(e.value).startswith("objective: got 'hinge'") and "cross-entropy" in str(e.value)


@pytest.mark.parametrize("family", [*AUX_TYPES, "vgg"])
def test_every_head_family_gives_logits_at_each_depth(family):
    for depth in range(5):
        spec = HeadSpec(family, depth, in_channels=8, num_classes=7, width=4, size=16)
        head = build_head(spec).eval()
        assert head(torch.randn(2, 8, 16, 16)).shape == (2, 7)
    linear = build_head(HeadSpec("cnn", 0, 8, 7, 4, 16))
    assert [type(m).__name__ for m in linear] == ["AdaptiveAvgPool2d", "Flatten", "Linear"]


def _learner(config: Config, ks, joint=False) -> LocalLearner:
    model = build_model(config)
    precision = choose_precision("fp32", None)
    return LocalLearner(
        config,
        ks,
        [model.trunk[k] for k in ks],
        [model.heads[k] for k in ks],
        precision,
        torch.device("cpu"),
        torch.contiguous_format,
        joint=joint,
    )


def test_a_joint_learner_backpropagates_through_every_module_and_a_local_one_does_not():
    config = Config(n_modules=3, width=8, momentum=0.0, weight_decay=0.0)
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    joint = _learner(config, [0, 1, 2], joint=True)
    joint.step(LocalInputs(x, y), lr=0.1)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in joint.trunk[0].parameters())
    # the probes of modules 1 and 2 learn on detached features: module 1's gradient is the
    # last head's loss's alone
    assert joint.key == "all" and joint.name == "the net"

    first = _learner(config, [0])
    result = first.step(LocalInputs(x, y), lr=0.1)
    assert not result.output.requires_grad and first.key == "0"
    with pytest.raises(RuntimeError, match="module 1 got an input that requires grad"):
        first.step(LocalInputs(x.requires_grad_(), y), lr=0.1)


def test_runs_without_the_kinetic_term_never_compute_it(tmp_path, monkeypatch):
    calls = []
    original = kinetic.forward_with_energy

    def counted(units, x):
        calls.append(len(units))
        return original(units, x)

    monkeypatch.setattr(kinetic, "forward_with_energy", counted)
    common = dict(arch="resnet", n_units=3, n_modules=3, n_train=128, method="parallel")
    run_experiment(tiny(tmp_path / "plain", **common))
    assert calls == []
    summary = run_experiment(tiny(tmp_path / "kinetic", **common, regularization="kinetic"))
    assert summary["status"] == "finished" and len(calls) == 3 * 2  # 2 steps x 3 modules


def test_end_to_end_is_a_joint_phase_and_the_layerwise_methods_are_not():
    for method in ("sequential", "parallel", "multilap", "end-to-end"):
        phases = plan(Config(method=method, n_modules=3, epochs=2))
        assert all(p.joint == (method == "end-to-end") for p in phases)


def test_an_objective_that_reads_images_refuses_the_feature_cache():
    class ReadsImages(objective_class("cross-entropy")):
        needs = frozenset({"output", "labels", "image"})

    config = Config(cache_features=True, augment="none")
    with pytest.raises(ConfigError, match="cache_features: got true with objective"):
        ReadsImages.check(config)
    ReadsImages.check(config.replace(cache_features=False))


@pytest.mark.parametrize("name", ["sequential", "end-to-end"])
def test_a_run_folder_written_before_the_local_learner_resumes_to_its_unbroken_numbers(
    tmp_path, name
):
    """The folders in tests/data were written by the workbench before this change (see its
    make.py): config.json without `objective`, last.pt with the optimizers keyed '0', '1' and
    'all'. Resumed here, each ends at the per-module accuracies its unbroken run had then."""
    folder = tmp_path / name
    shutil.copytree(OLD_RUNS / name, folder)
    saved = json.loads((folder / "config.json").read_text())
    assert "objective" not in saved
    config = Config.from_dict({**saved, "out": str(folder)})
    summary = run_experiment(config)
    assert summary["status"] == "finished"
    assert summary["resumed_from"] is not None
    unbroken = json.loads((OLD_RUNS / "unbroken.json").read_text())[name]
    assert summary["per_module_test_acc"] == unbroken


def test_the_readmes_worked_objective_is_one_file_and_trains(tmp_path):
    """README's example objective, dropped into the objectives folder, is offered and trains
    in a real `workbench run` process (the file is removed after)."""
    import subprocess
    import sys
    import textwrap

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    start = readme.index("      # workbench/local/objectives/multi_margin.py")
    end = readme.index("  and `workbench run --objective multi-margin`", start)
    code = textwrap.dedent(readme[start:end])
    target = Path(objective_class("cross-entropy").__module__.replace(".", "/") + ".py")
    target = Path(__file__).parents[1] / target.parent / "multi_margin.py"
    assert not target.exists()
    target.write_text(code)
    try:
        out = tmp_path / "run"
        flags = ["--objective", "multi-margin", "--n-train", "256", "--n-test", "128"]
        flags += ["--epochs", "2", "--width", "8", "--n-modules", "2", "--lr", "0.1"]
        done = subprocess.run(
            [sys.executable, "-m", "workbench", "run", *flags, "--out", str(out), "--quiet"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        target.unlink()
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == "multi-margin" and summary["status"] == "finished"
    assert summary["final_test_acc"] > 0.3  # 10 classes: chance is 0.1


def test_every_field_says_its_tab_help_and_roles_in_one_place():
    """FieldInfo is each field's one description: the panel's tabs, the labels, presets,
    resume and the series' folder names read it."""
    from workbench.config import FIELD_INFO, RESUMABLE_DIFFERENCES, config_fields
    from workbench.field_help import field_label
    from workbench.presets import NON_EXPERIMENT_FIELDS
    from workbench.runs import FIRST_IN_LABELS, NOT_LABELS
    from workbench.ui.panel import TABS

    names = [f.name for f in config_fields()]
    assert list(FIELD_INFO) == names
    assert all(FIELD_INFO[n].help for n in names)
    assert [n for tab in TABS.values() for n in tab] == names  # every field on one tab
    assert set(TABS) == {"Data", "Model", "Training", "Run"}
    assert field_label("aux_depth") == "aux depth (k)" and field_label("width") == "width"
    assert set(RESUMABLE_DIFFERENCES) == {"out", "device", "eval_batch_size"}
    assert (
        set(RESUMABLE_DIFFERENCES) <= set(NON_EXPERIMENT_FIELDS) and "seed" in NON_EXPERIMENT_FIELDS
    )
    assert "out" in NOT_LABELS and FIRST_IN_LABELS[:3] == ("method", "aux_depth", "arch")


def test_a_field_added_later_leaves_the_names_of_older_series_folders_alone():
    """`objective` came after series folders were named by their config's hash: at its default
    it is left out, so the hashes are those the workbench gave before (pinned here)."""
    from workbench.batch.series import config_hash

    assert config_hash(Config()) == "b6e244c3"
    kinetic_run = Config(arch="resnet20", regularization="kinetic", n_modules=3, seed=2)
    assert config_hash(kinetic_run) == "446cd168"
    assert config_hash(Config(objective="cross-entropy")) == config_hash(Config())


def test_summary_json_is_the_typed_summary_and_holds_only_known_keys(tmp_path):
    """summary.json is written from one Summary: every key a field, the `later` ones only once
    they are known, and no code can add a key the schema does not have."""
    from dataclasses import fields

    from workbench.summary import Summary

    summary = run_experiment(tiny(tmp_path, n_modules=2, epochs=2))
    names = {f.name for f in fields(Summary)}
    assert set(summary) <= names and summary["epochs_done"] == 4
    assert "error" not in summary and "pipeline_workers" not in summary
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    with pytest.raises(KeyError, match="no field 'final_acc'"):
        Summary().update({"final_acc": 0.5})


def test_a_learners_flops_are_its_modules_and_heads_in_the_models_count():
    from workbench.models import forward_flops

    config = Config(n_modules=3, width=8)
    learner = _learner(config, [1])
    model = build_model(config)  # the same seed: the same net
    x = torch.zeros(1, 1, 32, 32)
    trunk, heads = forward_flops(model, x)
    with torch.no_grad():
        into_second = model.trunk[0].eval()(x)
    assert learner.flops(into_second) == ([trunk[1]], [heads[1]])
    assert trunk[1] > 0 and heads[1] > 0


IMAGE_OBJECTIVE = '''"""Cross-entropy that also reads the images (a test's)."""

import torch.nn.functional as F

from workbench.local import objective


class Objective(objective.Objective):
    needs = frozenset({"output", "labels", "image"})

    def loss(self, head, batch):
        image, y = batch.image, batch.labels
        assert image is not None and image.dim() == 4 and image.shape[0] == y.shape[0]
        assert image.is_floating_point() and image.shape[1] == 1  # digits, before normalization
        assert -1e-5 <= float(image.min()) and float(image.max()) <= 1 + 1e-5
        logits = head(batch.output)
        ce = F.cross_entropy(logits, y)
        return objective.LocalLoss(ce + 0.0 * image.mean(), ce, logits)
'''


@pytest.fixture
def image_objective():
    folder = Path(objective_class("cross-entropy").__module__.replace(".", "/")).parent
    target = Path(__file__).parents[1] / folder / "image_check.py"
    assert not target.exists()
    target.write_text(IMAGE_OBJECTIVE)
    yield "image-check"
    target.unlink()


def test_an_objective_that_reads_the_images_gets_them_on_every_path(tmp_path, image_objective):
    """Sequential, multilap, and the pipeline's queues (module 2 in its own process) hand the
    objective the batch's images; the feature cache, which has none, is refused in one line."""
    import subprocess
    import sys

    common = ["--objective", image_objective, "--n-train", "128", "--n-test", "64", "--width", "8"]
    common += ["--n-modules", "2", "--epochs", "2", "--quiet"]
    for name, flags in {
        "sequential": ["--method", "sequential"],
        "multilap": ["--method", "multilap"],
        "pipeline": ["--method", "parallel", "--pipeline", "true"],
    }.items():
        out = tmp_path / name
        done = subprocess.run(
            [sys.executable, "-m", "workbench", "run", *common, *flags, "--out", str(out)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, (name, done.stderr[-2000:])
        assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    refused = subprocess.run(
        [sys.executable, "-m", "workbench", "run", *common, "--cache-features", "true",
         "--augment", "none", "--out", str(tmp_path / "cached")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "cache_features: got true with objective" in (
        refused.stderr
    )
    assert not (tmp_path / "cached" / "metrics.jsonl").exists()
