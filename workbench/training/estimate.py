"""How long the rest of a run will take: the first steps' speed, scaled by each phase's FLOPs.

The first steps a process trains are timed (after the very first, which pays for warm-up:
cuDNN autotuning, compilation). A phase's cost per training image is the forward FLOPs of its
frozen prefix plus 3x those of its trained modules and heads (forward and backward); each epoch
then evaluates the test set (and, with precise BN, a tenth of the training set) up to its last
trained module, and the run ends with one evaluation of every module. Measured speed times
these costs gives every epoch still to go: a guide (data loading and kernels differ per
layer), not a promise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from workbench.config import Config
from workbench.training.methods import Phase

PROBE_STEPS = 5  # timed steps after the first...
PROBE_SECONDS = 10.0  # ...or this long, whichever comes first
STATS_IMAGES = 4096  # precise BN's at most (a tenth of the training set)


@dataclass
class CostModel:
    """Forward FLOPs per image of each module (`trunk`) and head, and the images each epoch."""

    trunk: list[float]
    heads: list[float]
    n_train: int
    n_test: int
    n_stats: int  # images precise BN feeds the trained modules before each evaluation

    @classmethod
    def of(cls, config: Config, num_classes: int, n_train: int, n_test: int) -> CostModel:
        trunk, heads = module_flops(config, num_classes)
        n_stats = min(STATS_IMAGES, n_train // 10) if config.precise_bn else 0
        return cls(trunk, heads, n_train, n_test, n_stats)

    def train_per_image(self, phase: Phase) -> float:
        prefix = sum(self.trunk[: phase.frozen_prefix])
        trained = sum(self.trunk[k] + self.heads[k] for k in phase.modules)
        return prefix + 3 * trained

    def epoch(self, phase: Phase) -> float:
        """One epoch of the phase: its training steps and the evaluation after them."""
        upto = max(phase.modules) + 1
        forward = sum(self.trunk[:upto]) + sum(self.heads[:upto])
        return (
            self.n_train * self.train_per_image(phase)
            + self.n_test * forward
            + self.n_stats * sum(self.trunk[:upto])
        )

    def remaining(self, phases: Sequence[Phase], phase_index: int, epoch: int) -> float:
        """FLOPs from the start of `epoch` of `phases[phase_index]` to the run's end."""
        total = sum(self.epoch(p) * p.epochs for p in phases[phase_index + 1 :])
        total += self.epoch(phases[phase_index]) * (phases[phase_index].epochs - epoch)
        return total + self.n_test * (sum(self.trunk) + sum(self.heads))  # the final evaluation


def module_flops(config: Config, num_classes: int) -> tuple[list[float], list[float]]:
    """Forward FLOPs per image of each module and head, counted on the meta device (nothing is
    allocated); equal shares where an architecture cannot be traced there."""
    from workbench.bench import forward_flops
    from workbench.models import build_model

    try:
        with torch.device("meta"):
            model = build_model(config, num_classes, initialize=False)
            x = torch.empty(1, config.dataset_info.channels, config.input_size, config.input_size)
        trunk, heads = forward_flops(model, x)
        if sum(trunk) > 0:
            return [float(f) for f in trunk], [float(f) for f in heads]
    except Exception:  # an estimate is a guide: never stop a run for it
        pass
    return [1.0] * config.n_modules, [0.3] * config.n_modules


class SpeedProbe:
    """Images per second over the first steps of a pass, the very first excluded.

    `sync` waits for the device (CUDA runs ahead of the host); it is called twice in all.
    """

    def __init__(self, sync: Callable[[], None]):
        self.sync = sync
        self.start: float | None = None
        self.images = 0
        self.steps = 0

    def after_step(self, images: int) -> float | None:
        """Record a step; the speed once enough steps were timed, None until then."""
        if self.start is None:
            self.sync()
            self.start = time.perf_counter()
            return None
        self.images += images
        self.steps += 1
        if self.steps >= PROBE_STEPS or time.perf_counter() - self.start >= PROBE_SECONDS:
            self.sync()
            return self.images / max(time.perf_counter() - self.start, 1e-9)
        return None

    def at_pass_end(self, images: int, seconds: float) -> float:
        """The speed when the pass ended first (the device was synced by the caller)."""
        if self.steps and self.start is not None:
            return self.images / max(time.perf_counter() - self.start, 1e-9)
        return images / max(seconds, 1e-9)
