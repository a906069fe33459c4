"""The two strategies a Trainer is given, so that execution backends compose instead of
overriding its internals (engine.py runs one loop with any of them):

    Driver  who runs a training pass: InProcess, the Trainer's own loop (engine.py,
            Trainer.local_pass), or the pipeline's worker processes (pipeline.py, Pipelined)
    Sync    what the processes of one run share: Alone, a plain run, or torchrun's ranks
            (distributed.py, DataParallel): DDP-wrapped learners, each rank's slice of every
            batch, epoch totals summed over the ranks, one stop flag, rank 0's resume state

Each method here is a point where the loop asks its strategies; the defaults are a plain
run's, which is what InProcess and Alone are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor, nn

    from workbench.summary import Summary
    from workbench.training.engine import Trainer
    from workbench.training.methods import Phase

# ([loss sum, correct] per module, images, seconds, last lr): what a training pass returns
PassTotals = tuple[list[list[float]], int, float, float]


class InProcess:
    """The learners step in this process, one batch at a time (the Trainer's own loop)."""

    def session(self, trainer: Trainer, summary: Summary) -> contextlib.AbstractContextManager:
        """What is set up for the whole of `fit` (and taken down after, however it ends)."""
        return contextlib.nullcontext()

    def train_pass(self, trainer: Trainer, phase: Phase, epoch: int) -> PassTotals:
        return trainer.local_pass(phase, epoch)

    def peak_memory(self, trainer: Trainer, own: int) -> int:
        """The run's peak memory, given this process's."""
        return own


class Alone:
    """A plain run: one process, nothing shared."""

    world_size = 1

    def attach(self, trainer: Trainer) -> None:
        """Adapt the trainer once its batches are made (share its stop flag, check them)."""

    def parallel(self, module: nn.Module) -> nn.Module:
        """A trained module or head as this strategy trains it (DDP-wrapped across ranks)."""
        return module

    def slices(self, batches: Any, timed: Iterator[tuple[Tensor, Tensor]]) -> Iterator:
        """This process's part of each training batch."""
        return timed

    def combine(self, totals: list[list[float]], seen: int) -> tuple[list[list[float]], int]:
        """A pass's totals over every process of the run."""
        return totals, seen

    def annotate(self, rows: list[dict[str, Any]]) -> None:
        """Add to an epoch's metrics rows what only this strategy knows."""

    def restore(self, trainer: Trainer) -> tuple[int, int]:
        """Restore the run's state; returns (phase index, epochs done in it)."""
        return trainer.restore()
