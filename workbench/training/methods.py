"""The training methods as plans: which modules train together, for how many epochs, in order.

    sequential  Belilovsky's Algorithm 1: module k trains to the end while 1..k-1 stay frozen.
    multilap    TRGL: R laps over the modules, epochs/R epochs per module per lap.
    parallel    DGL: every batch goes through all modules; each steps on its own loss.
    end-to-end  backprop through the whole trunk; the aux heads are read-out probes.

Every method trains each module for `config.epochs` epochs in all, so runs compare fairly.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.config import Config


@dataclass(frozen=True)
class Phase:
    """One stretch of training: `modules` (0-indexed) train together for `epochs` epochs."""

    modules: tuple[int, ...]
    epochs: int
    lap: int = 0
    first_epoch: int = 0  # how many epochs these modules already had (for the lr schedule)

    @property
    def frozen_prefix(self) -> int:
        """Modules before this index run frozen (eval mode, no grad) to feed the trained ones."""
        return self.modules[0]


def plan(config: Config) -> list[Phase]:
    """The method's phases, in the order they run."""
    k, epochs = config.n_modules, config.epochs
    if config.method == "sequential":
        return [Phase((m,), epochs) for m in range(k)]
    if config.method == "multilap":
        laps = config.laps
        per_lap = [epochs // laps + (1 if r < epochs % laps else 0) for r in range(laps)]
        return [
            Phase((m,), per_lap[r], lap=r, first_epoch=sum(per_lap[:r]))
            for r in range(laps)
            for m in range(k)
        ]
    return [Phase(tuple(range(k)), epochs)]  # parallel, end-to-end
