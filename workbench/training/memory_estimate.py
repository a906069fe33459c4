"""A run's peak memory, estimated before its first step, so that a config that cannot fit is
refused in one line instead of dying in an allocator (a CUDA out-of-memory error, the OOM
killer, a `std::bad_alloc` abort) with nothing written.

Each learner's training step is run on the meta device, where tensors have sizes but no
memory, under the tensor counter the bench measures with (workbench.memory.tensor_memory):
forward through its modules and heads at the run's batch size, backward from its outputs.
The counter's peak is what the step allocates: activations kept for backward, the gradients
of backward, the parameters' gradients. A phase's learners step one after another, so its
peak is its largest learner's step plus the others' gradients; beside that, the optimizer's
state of the trained parameters (SGD's momentum, Adam's two moments), every parameter and
buffer, and the test outputs a sequential run keeps between phases (where they fit in half
the free memory, as evaluation.py decides). What the process holds already (the data, and
the libraries on a CPU; what is allocated on a GPU) is measured, not estimated. Half
precision is taken to halve a step's tensors. The bench's memory section compares the
estimate with the measured peak.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.config import Config, ConfigError
from workbench.events import format_bytes
from workbench.memory import free_memory_bytes, keep_budget_bytes, proc_bytes, tensor_memory
from workbench.records import RunFailed
from workbench.training.device import choose_precision, device_capability
from workbench.training.methods import plan


class MemoryRefused(ConfigError):
    """A config whose estimated peak memory exceeds what the device has available."""


@dataclass
class MemoryEstimate:
    """A run's estimated peak memory on its device, in bytes, by what holds it."""

    held_before: int  # what the process holds before training: data, libraries, the cache
    weights: int  # every parameter and buffer of modules and heads
    steps: int  # the largest phase's training step: activations and gradients
    optimizer_state: int  # the trained parameters' momentum or moments
    kept_outputs: int  # test-set outputs kept between a sequential run's phases
    available: int  # what the device had free for the run before training

    @property
    def training(self) -> int:
        """What training steps allocate: the bench's measured peak is of this part."""
        return self.steps + self.optimizer_state

    @property
    def added(self) -> int:
        """What the run adds to the process's memory."""
        return self.weights + self.training + self.kept_outputs

    @property
    def peak(self) -> int:
        return self.held_before + self.added

    def fits(self) -> bool:
        return self.added <= self.available

    def describe(self, device: torch.device) -> str:
        """`about 1.2 GiB at its peak (0.8 GiB a training step, ...), 20 GiB available on cpu`."""
        parts = ", ".join(
            f"{format_bytes(v)} {name}"
            for name, v in (
                ("a training step", self.steps),
                ("optimizer state", self.optimizer_state),
                ("weights", self.weights),
                ("kept test outputs", self.kept_outputs),
                ("already held", self.held_before),
            )
            if v >= 2**20
        )
        return (
            f"about {format_bytes(self.peak)} at its peak ({parts}), "
            f"{format_bytes(self.available)} available on {device}"
        )


def estimate_memory(
    config: Config, num_classes: int, device: torch.device, n_train: int, n_test: int
) -> MemoryEstimate:
    """`config`'s peak memory on `device` (see the module's docstring), training on `n_train`
    images (a batch is never larger) and evaluating `n_test`."""
    from workbench.models import build_model

    precision = choose_precision(config.precision, device_capability(device)).name
    half = precision in ("bf16", "fp16")
    batch = min(config.batch_size, n_train or config.batch_size)
    with torch.device("meta"):
        model = build_model(config, num_classes, initialize=False)
        x = torch.empty(batch, config.dataset_info.channels, config.input_size, config.input_size)
    trunk, heads = list(model.trunk), list(model.heads)
    inputs, kept_sizes = [], []  # each module's input; each output's bytes per image
    with torch.no_grad():
        for module in trunk:
            inputs.append(x)
            x = module(x)
            kept_sizes.append(x[0].numel() * (2 if half else 4))
    params = [count_bytes(m) + count_bytes(h) for m, h in zip(trunk, heads)]
    steps, state, kept = 0, 0, 0
    simulated: dict[tuple[int, ...], int] = {}
    phases = plan(config)
    for phase in phases:
        groups = [phase.modules] if phase.joint else [(k,) for k in phase.modules]
        for g in groups:  # a module trained again (multilap) steps as it did before
            if g not in simulated:
                simulated[g] = step_bytes(trunk, heads, g, inputs[g[0]])
        learner_steps = [simulated[g] for g in groups]
        trained = sum(params[k] for k in phase.modules)
        largest = max(range(len(groups)), key=lambda i: learner_steps[i])
        others = trained - sum(params[k] for k in groups[largest])  # their gradients stay
        steps = max(steps, learner_steps[largest] // (2 if half else 1) + others)
        state = max(state, trained * optimizer_slots(config))
    available = free_memory_bytes(device)
    if config.method == "sequential" and len(phases) > 1:
        largest_kept = max(kept_sizes[:-1], default=0) * n_test
        kept = largest_kept if largest_kept <= keep_budget_bytes(available) else 0
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return MemoryEstimate(
        held_before=held_bytes(device),
        weights=weights,
        steps=steps,
        optimizer_state=state,
        kept_outputs=kept,
        available=available,
    )


def step_bytes(
    trunk: list[nn.Module], heads: list[nn.Module], group: tuple[int, ...], x: Any
) -> int:
    """Peak bytes one learner's step allocates, run on the meta device: forward through the
    group's modules (a joint group backprops through all of them from its last head; the
    other heads read detached features, as learner.py's), every head's outputs, backward."""
    with tensor_memory() as counted:
        outputs = []
        for i, k in enumerate(group):
            x = trunk[k](x)
            x = x[0] if isinstance(x, tuple) else x  # a block that also returns its energy
            seen = x if i == len(group) - 1 else x.detach()
            outputs.append(head_outputs(heads[k], seen))
        loss = sum(o.float().sum() for out in outputs for o in out if o.requires_grad)
        if isinstance(loss, torch.Tensor):
            loss.backward()
    for k in group:  # the next learner's backward makes its own gradients, not adds to these
        for p in [*trunk[k].parameters(), *heads[k].parameters()]:
            p.grad = None
    return counted.peak


def head_outputs(head: nn.Module, h: Any) -> list[Any]:
    """Every tensor a head computes for its loss: all its parts where it has several (an
    InfoPro head's features, logits and decoded image)."""
    takes_parts = "parts" in inspect.signature(head.forward).parameters
    out = head(h, parts=True) if takes_parts else head(h)
    return [o for o in (out if isinstance(out, tuple) else (out,)) if isinstance(o, torch.Tensor)]


def count_bytes(module: nn.Module) -> int:
    """fp32 bytes of a module's parameters (one gradient, or one optimizer slot, of them)."""
    return sum(p.numel() for p in module.parameters()) * 4


def optimizer_slots(config: Config) -> int:
    """Tensors the optimizer keeps per parameter: Adam's two moments, SGD's momentum."""
    if config.optimizer == "adam":
        return 2
    return 1 if config.momentum > 0 else 0


def held_bytes(device: torch.device) -> int:
    """What the process holds now: CUDA's allocated bytes, or the CPU's resident set."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return proc_bytes("/proc/self/status", "VmRSS") or 0


def refuse_if_too_big(estimate: MemoryEstimate, config: Config, device: torch.device) -> None:
    """Refuse, in one line, a config whose estimate does not fit in what is available."""
    if estimate.fits():
        return
    raise MemoryRefused(
        f"memory: batch_size {config.batch_size} with width {config.width} needs "
        f"{estimate.describe(device)}; allowed: a smaller batch_size or width, fewer units "
        "per module, or --yes (check_memory=False from Python) to try anyway"
    )


# -- an allocation that failed during training ----------------------------------------------------
_ASKED = re.compile(r"tried to allocate\s+([\d.]+)\s*(bytes|[KMGT]iB|B)?", re.IGNORECASE)
_UNITS = {"bytes": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation that failed: CUDA's OutOfMemoryError, Python's
    MemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "can't allocate memory" in text or "bad_alloc" in text or "out of memory" in text
    )


def bytes_asked(error: BaseException) -> int | None:
    """The allocation the error names (`Tried to allocate 2.00 GiB`, `you tried to allocate
    123 bytes`), in bytes; None where it names none."""
    found = _ASKED.search(str(error))
    if not found:
        return None
    return int(float(found.group(1)) * _UNITS[(found.group(2) or "bytes").lower()])


class OutOfMemory(RunFailed):
    """An allocation failed during training; the run ends as failed, its records kept."""


def out_of_memory_message(
    error: BaseException,
    modules: tuple[int, ...],
    epoch: int,
    device: torch.device,
    estimate: MemoryEstimate | None,
) -> str:
    """One line: where the allocation failed, what it asked for, what was expected."""
    asked = bytes_asked(error)
    what = f"{format_bytes(asked)} could not be allocated" if asked else "an allocation failed"
    names = ", ".join(str(k + 1) for k in modules)
    expected = (
        f" (estimated peak {format_bytes(estimate.peak)}, {format_bytes(estimate.available)} "
        "available before training)"
        if estimate is not None
        else ""
    )
    return (
        f"out of memory: module{'s' if len(modules) > 1 else ''} {names}, epoch {epoch}: "
        f"{what} on {device}{expected}; allowed: a smaller batch_size or width, or fewer "
        "units per module"
    )
