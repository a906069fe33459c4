"""Where a whole run's time goes: data, training, evaluation, BatchNorm re-estimates, callbacks,
checkpoints. The split is recorded in summary.json (`time_split_s`) and `workbench bench`'s
whole-run section reports it, so a regression in any part shows up as a number."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

PARTS = ("data", "train", "evaluate", "precise_bn", "callbacks", "checkpoints")


class Clock:
    """Wall seconds per part of a run; a part inside another is charged to itself alone.

    `sync` (the device's synchronize) runs at the end of each outermost part, so work a GPU
    queued is charged to the part that queued it. A part inside another (the live plots'
    callbacks during training's steps) is charged its host time and does not sync: a sync there
    would stall the device's queue mid-epoch and charge queued training kernels to it.
    """

    def __init__(self, sync: Callable[[], None] = lambda: None):
        self.sync = sync
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.started = time.perf_counter()
        self.active: str | None = None

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Charge the block's wall time to `name` (and not to an enclosing part)."""
        outer, self.active = self.active, name
        start = time.perf_counter()
        try:
            yield
        finally:
            if outer is None:
                self.sync()
            spent = time.perf_counter() - start
            self.seconds[name] += spent
            if outer is not None:
                self.seconds[outer] -= spent  # the outer part's own time excludes this
            self.active = outer

    def add(self, name: str, seconds: float) -> None:
        """Charge seconds measured elsewhere (data waits inside the training loop)."""
        self.seconds[name] += seconds
        if self.active is not None:
            self.seconds[self.active] -= seconds

    def split(self) -> dict[str, float]:
        """Seconds per part since the clock started, with `other` the rest and `total`."""
        total = time.perf_counter() - self.started
        out = {k: round(v, 4) for k, v in self.seconds.items()}
        out["other"] = round(total - sum(self.seconds.values()), 4)
        out["total"] = round(total, 4)
        return out
