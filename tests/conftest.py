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
