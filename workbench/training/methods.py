"""The training methods as plans: which modules train together, for how many epochs, in order.

    sequential  Belilovsky's Algorithm 1: module k trains to the end while 1..k-1 stay frozen.
    multilap    TRGL: R laps over the modules, epochs/R epochs per module per lap.
    parallel    DGL: every batch goes through all modules; each steps on its own loss.
    end-to-end  backprop through the whole trunk; the aux heads are read-out probes.

Every method trains each module for `config.epochs` epochs in all, so runs compare fairly;
with `extra_epochs_per_module` (TRGL's ne2) sequential module k trains ne1 + (k-1) ne2 epochs,
ne1 = `epochs`, and multilap gives module k those extra epochs in every lap (TRGL's rounds).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from workbench.config import Config


@dataclass(frozen=True)
class Phase:
    """One stretch of training: `modules` (0-indexed) train together for `epochs` epochs."""

    modules: tuple[int, ...]
    epochs: int
    lap: int = 0
    first_epoch: int = 0  # how many epochs these modules already had (for the lr schedule)
    total_epochs: int = 0  # all the epochs these modules get, every lap (the lr schedule's span)
    joint: bool = False  # gradients cross the modules' boundaries: one learner over them all

    @property
    def frozen_prefix(self) -> int:
        """Modules before this index run frozen (eval mode, no grad) to feed the trained ones."""
        return self.modules[0]


def plan(config: Config) -> list[Phase]:
    """The method's phases, in the order they run."""
    k, epochs, extra = config.n_modules, config.epochs, config.extra_epochs_per_module
    if config.method == "sequential":
        return [Phase((m,), epochs + m * extra, total_epochs=epochs + m * extra) for m in range(k)]
    if config.method == "multilap":
        laps = config.laps
        per_lap = [epochs // laps + (1 if r < epochs % laps else 0) for r in range(laps)]
        return [
            Phase(
                (m,),
                per_lap[r] + m * extra,
                lap=r,
                first_epoch=sum(per_lap[:r]) + r * m * extra,
                total_epochs=epochs + laps * m * extra,
            )
            for r in range(laps)
            for m in range(k)
        ]
    joint = config.method == "end-to-end"
    return [Phase(tuple(range(k)), epochs, total_epochs=epochs, joint=joint)]  # parallel too


def learning_rate(config: Config, epoch: float, total_epochs: int | None = None) -> float:
    """The lr after `epoch` (fractional) of a module's `total_epochs` (default config.epochs)."""
    if config.lr_schedule == "step":
        return config.lr * config.lr_decay ** int(epoch // config.lr_step)
    if config.lr_schedule == "milestones":  # local-loss: decayed from each milestone epoch on
        milestones = [int(e) for e in config.lr_milestones.split(",")]
        return config.lr * config.lr_decay ** bisect.bisect_right(milestones, int(epoch))
    if config.lr_schedule == "cosine":
        span = total_epochs or config.epochs
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(epoch / span, 1.0)))
    if config.lr_schedule == "infopro-cosine":
        return infopro_cosine(config.lr, int(epoch) + 1, total_epochs or config.epochs)
    return config.lr


def infopro_cosine(lr: float, epoch: int, epochs: int) -> float:
    """InfoPro's `--cos_lr` (train.py, adjust_learning_rate): set once per epoch (1-indexed),
    cosine from epoch 1 on, blended linearly from 0.01 over the first 10 epochs (their warm-up
    for batch 1024 at lr 0.8)."""
    cosine = 0.5 * lr * (1 + math.cos(math.pi * min(epoch / epochs, 1.0)))
    if epoch <= 10:
        return cosine * (epoch - 1) / 10 + 0.01 * (11 - epoch) / 10
    return cosine


def restarts_momentum(config: Config, epoch: int) -> bool:
    """Whether a module's SGD starts afresh at the start of its `epoch` (0-indexed): at each
    step decay, as layerCNN's and DGL's ImageNet code build a new optimizer there."""
    return config.momentum_restart and epoch > 0 and epoch % config.lr_step == 0
