"""How long the rest of a run will take: the first steps' speed, scaled by each phase's FLOPs.

The first steps a process trains are timed (after the very first, which pays for warm-up:
cuDNN autotuning, compilation). A phase's cost per training image is the forward FLOPs of its
frozen prefix plus 3x those of its trained modules and heads (forward and backward); each epoch
then evaluates the test set through its trained modules and their heads (and, with precise BN,
feeds a tenth of the training set up to its last trained module). Measured speed times
these costs gives every epoch still to go: a guide (data loading and kernels differ per
layer), not a promise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from workbench.config import Config
from workbench.data import statistics_count
from workbench.events import ESTIMATE, PROGRESS
from workbench.training.methods import Phase

PROBE_STEPS = 5  # timed steps after the first...
PROBE_SECONDS = 10.0  # ...or this long, whichever comes first


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
        n_stats = statistics_count(n_train, config.batch_size) if config.precise_bn else 0
        return cls(trunk, heads, n_train, n_test, n_stats)

    def train_per_image(self, phase: Phase) -> float:
        prefix = sum(self.trunk[: phase.frozen_prefix])
        trained = sum(self.trunk[k] + self.heads[k] for k in phase.modules)
        return prefix + 3 * trained

    def epoch(self, phase: Phase) -> float:
        """One epoch of the phase: its training steps and the evaluation after them, which
        runs only the trained modules and their heads (a sequential phase's prefix outputs on
        the test set are kept from the phase before, and the final summary reuses logits)."""
        upto = max(phase.modules) + 1
        trained = sum(self.trunk[k] + self.heads[k] for k in phase.modules)
        return (
            self.n_train * self.train_per_image(phase)
            + self.n_test * trained
            + self.n_stats * sum(self.trunk[:upto])
        )

    def remaining(self, phases: Sequence[Phase], phase_index: int, epoch: int) -> float:
        """FLOPs from the start of `epoch` of `phases[phase_index]` to the run's end."""
        total = sum(self.epoch(p) * p.epochs for p in phases[phase_index + 1 :])
        return total + self.epoch(phases[phase_index]) * (phases[phase_index].epochs - epoch)


def module_flops(config: Config, num_classes: int) -> tuple[list[float], list[float]]:
    """Forward FLOPs per image of each module and head, counted on the meta device (nothing is
    allocated); equal shares where an architecture cannot be traced there."""
    from workbench.models import build_model, forward_flops

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


PROGRESS_EVERY_S = 0.5  # PROGRESS events at most this often: a widget redraw is ~ms


class ProgressReporter:
    """PROGRESS events inside one epoch: the step, this epoch's images/s so far, and the time
    left for the whole run at that speed (host time: on a GPU, the steps the host queued)."""

    def __init__(
        self,
        emit: Callable[[str, dict[str, Any]], None],
        cost: CostModel,
        phases: Sequence[Phase],
        index: int,
        epoch: int,
        n_steps: int,
        global_epoch: int,
    ):
        self.emit, self.cost, self.phases, self.index = emit, cost, phases, index
        self.epoch, self.n_steps, self.global_epoch = epoch, n_steps, global_epoch
        self.start = self.last = time.perf_counter()
        self.first = True

    def after_step(self, step: int, images_seen: int) -> None:
        """Emit PROGRESS after the first step, then at most every PROGRESS_EVERY_S."""
        now = time.perf_counter()
        if not self.first and now - self.last < PROGRESS_EVERY_S:
            return
        self.first, self.last = False, now
        phase = self.phases[self.index]
        images_per_s = images_seen / max(now - self.start, 1e-9)
        flops_per_s = images_per_s * self.cost.train_per_image(phase)
        done = (step + 1) / self.n_steps
        left = self.cost.remaining(self.phases, self.index, self.epoch + done) / flops_per_s
        self.emit(
            PROGRESS,
            {
                "step": step + 1,
                "steps": self.n_steps,
                "epoch": phase.first_epoch + self.epoch + 1,
                "global_epoch": self.global_epoch,
                "modules": [k + 1 for k in phase.modules],
                "images_per_s": images_per_s,
                "seconds_left": left,
            },
        )


# Training and test images of each dataset (their standard splits), for an estimate made
# before anything is loaded; an image folder's size is unknown until it is scanned.
DATASET_SIZES = {
    "mnist-5k": (4000, 1000),
    "mnist": (60000, 10000),
    "fashion-mnist": (60000, 10000),
    "cifar10": (50000, 10000),
    "cifar100": (50000, 10000),
    "svhn": (73257, 26032),
    "stl10": (5000, 8000),
    "imagenet": (1281167, 50000),
    "tiny-imagenet": (100000, 10000),
}
_DEVICE_FLOPS: dict[str, float] = {}


class EstimateMixin:
    """The Trainer's estimates (they read its config, data, phases and event emitter): ESTIMATE
    after the first timed steps, PROGRESS during each epoch."""

    config: Config
    data: Any
    train_batches: Any
    phases: list[Phase]
    device: torch.device
    global_epoch: int
    estimated: bool
    cost: CostModel | None
    memory: Any  # the run's MemoryEstimate, or None
    emit: Callable[[str, dict[str, Any]], None]
    sync: Any

    def cost_model(self) -> CostModel:
        """FLOPs per image of the run's modules and heads (built once per run)."""
        if self.cost is None:
            n_train = self.data.provenance.get("n_train")
            self.cost = CostModel.of(
                self.config,
                self.data.num_classes,
                n_train or len(self.train_batches) * self.config.batch_size,
                self.data.provenance.get("n_test") or 0,
            )
        return self.cost

    def progress_reporter(self, phase: Phase, epoch: int, n_steps: int) -> ProgressReporter:
        """PROGRESS events for one epoch of `phase`."""
        index = self.phases.index(phase)
        return ProgressReporter(
            self.emit, self.cost_model(), self.phases, index, epoch, n_steps, self.global_epoch + 1
        )

    def report_estimate(self, phase: Phase, epoch: int, images_per_s: float) -> None:
        """Emit ESTIMATE: the rest of the run at the speed of these first steps (this
        process's: the run's processes together go world_size times faster)."""
        images_per_s *= self.sync.world_size
        self.estimated = True
        cost = self.cost_model()
        index = self.phases.index(phase)
        flops_per_s = images_per_s * cost.train_per_image(phase)
        left = phase.epochs - epoch + sum(p.epochs for p in self.phases[index + 1 :])
        memory = self.memory
        self.emit(
            ESTIMATE,
            {
                "seconds": cost.remaining(self.phases, index, epoch) / flops_per_s,
                "images_per_s": images_per_s,
                "epochs_left": left,
                "device": str(self.device),
                **(
                    {
                        "memory_bytes": memory.peak,
                        "memory_held_bytes": memory.held_before,
                        "memory_available_bytes": memory.available,
                    }
                    if memory is not None
                    else {}
                ),
            },
        )


def device_flops_per_s(device: torch.device) -> float:
    """FLOP/s this device reaches training a 3x3 convolution (64 channels, 32x32, batch 32):
    timed once per process (a fraction of a second), a stand-in for a whole net's speed."""
    key = str(device)
    if key not in _DEVICE_FLOPS:
        conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(device)
        x = torch.randn(32, 64, 32, 32, device=device)
        flops = 3 * 2 * 64 * 64 * 9 * 32 * 32 * 32  # forward and backward of the batch
        conv(x).sum().backward()  # warm-up
        reps, start = 0, time.perf_counter()
        while reps < 3 or time.perf_counter() - start < 0.2:
            conv(x).sum().backward()
            reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        _DEVICE_FLOPS[key] = reps * flops / (time.perf_counter() - start)
    return _DEVICE_FLOPS[key]


def run_flops(config: Config, sizes: tuple[int, int] | None = None) -> float | None:
    """The whole run's FLOPs (CostModel), before anything is loaded: its dataset's sizes
    (`sizes`, train and test images, where the dataset's are unknown), cut to n_train and
    n_test. None for an image folder without `sizes`."""
    from workbench.training.methods import plan

    sizes = DATASET_SIZES.get(config.dataset, sizes)
    if sizes is None:
        return None
    n_train = min(config.n_train, sizes[0]) if config.n_train > 0 else sizes[0]
    n_test = min(config.n_test, sizes[1]) if config.n_test > 0 else sizes[1]
    num_classes = config.dataset_info.num_classes or 10
    cost = CostModel.of(config, num_classes, n_train, n_test)
    return cost.remaining(plan(config), 0, 0)


def prior_estimate(config: Config, device: torch.device) -> float | None:
    """Seconds the whole run should take on `device`, before anything is loaded: the config's
    FLOPs (CostModel) at device_flops_per_s. None for an image folder (size unknown). A guide
    within a factor of a few: small layers and data loading run slower than one big conv."""
    flops = run_flops(config)
    return None if flops is None else flops / device_flops_per_s(device)
