"""Shared fixtures: tiny configs on the embedded digits, and the real datasets when present."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench import Config

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout (real Fashion-MNIST, CIFAR-10 JPEG copy)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def trainers(monkeypatch) -> list:
    """The Trainer objects run_experiment builds during the test, to look at their models."""
    from workbench.training import Trainer

    built: list[Trainer] = []
    original = Trainer.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(Trainer, "__init__", spy)
    return built


def tiny(tmp_path: Path, **fields) -> Config:
    """A config small enough for a CPU test: a few hundred digits, one epoch, narrow nets."""
    values = dict(
        dataset="mnist-5k",
        n_train=256,
        n_test=128,
        epochs=1,
        batch_size=64,
        width=8,
        out=str(tmp_path / "run"),
        device="cpu",
    )
    values.update(fields)
    return Config(**values)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With WORKBENCH_RECORD_RUNS=FILE, write every run the suite trained (its folder under the
    session's temporary directory, its per-module test accuracies and its metrics rows) to
    FILE as JSON: a refactor's before and after compare with tools/compare_recorded_runs.py."""
    import json
    import os

    target = os.environ.get("WORKBENCH_RECORD_RUNS")
    factory = getattr(session.config, "_tmp_path_factory", None)
    if not target or factory is None:
        return
    base = factory.getbasetemp()
    runs: dict[str, dict] = {}
    for summary_path in sorted(base.rglob("summary.json")):
        folder = summary_path.parent
        try:
            summary = json.loads(summary_path.read_text())
            metrics = folder / "metrics.jsonl"
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line]
        except (OSError, ValueError):
            continue
        keep = ("module", "split", "global_epoch", "loss", "acc", "top5")
        runs[str(folder.relative_to(base))] = {
            "status": summary.get("status"),
            "per_module_test_acc": summary.get("per_module_test_acc"),
            "ensemble_test_acc": summary.get("ensemble_test_acc"),
            "rows": [{k: row.get(k) for k in keep} for row in rows],
        }
    Path(target).write_text(json.dumps(runs, indent=1, sort_keys=True))
