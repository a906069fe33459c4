"""How large a teaching notebook's runs can be on this device in `budget_minutes`.

A notebook gives a ladder of sizes (each a dict of Config fields: images, epochs, width, depth;
smallest first), its variants and its seeds. `choose_size` estimates each rung's whole series
from the workbench's cost model (every run's FLOPs: training/estimate.py's CostModel, with its
evaluations and BN re-estimates) at the speed this device trains the notebook's own network
(timed on a few random batches of the smallest rung), plus a few seconds per run for what FLOPs
do not count (start-up, data, checkpoints), and picks the largest rung that fits. On a GPU the
same notebook thus runs the sizes that show its paper's effect in the same minutes a CPU spends
on the laptop sizes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workbench.config import Config

RUN_OVERHEAD_S = 3.0  # per run: process-side start-up, data loading, checkpoints, summaries


@dataclass(frozen=True)
class SizeChoice:
    """The rung chosen, and every rung's estimate (seconds for the whole series)."""

    values: dict[str, Any]
    seconds: float
    budget_s: float
    flops_per_s: float
    device: str
    estimates: list[tuple[dict[str, Any], float]] = field(default_factory=list)

    def __str__(self) -> str:
        index = next(i for i, (v, _) in enumerate(self.estimates) if v == self.values)
        sizes = ", ".join(f"{k}={v}" for k, v in self.values.items())
        line = (
            f"size {index + 1} of {len(self.estimates)} ({sizes}): about "
            f"{self.seconds / 60:.1f} min of the {self.budget_s / 60:g}-min budget on "
            f"{self.device}, which trains this network at {self.flops_per_s / 1e9:.3g} GFLOP/s"
        )
        if self.seconds > self.budget_s:
            line += "; the smallest size is over budget: it runs anyway"
        elif index + 1 < len(self.estimates):
            line += f"; the next size would take about {self.estimates[index + 1][1] / 60:.1f} min"
        return line


def series_seconds(
    base: Config,
    variants: Mapping[str, Mapping[str, Any]],
    seeds: int,
    flops_per_s: float,
) -> float:
    """Estimated seconds for every variant of `base`, `seeds` times each."""
    from workbench.training.estimate import run_flops

    total = 0.0
    for changes in variants.values():
        flops = run_flops(base.replace(**changes), sizes=(50000, 10000))  # a folder: a guess
        total += seeds * (flops / flops_per_s + RUN_OVERHEAD_S)
    return total


def measured_flops_per_s(config: Config, steps: int = 3, repeats: int = 3) -> float:
    """FLOP/s this device reaches training `config`'s whole network end to end on random
    batches (the first, warm-up step untimed): the best of `repeats` timings of `steps`
    steps, so that a moment's load on a shared machine does not shrink the size chosen."""
    import torch
    import torch.nn.functional as F

    from workbench.models import build_model, forward_flops
    from workbench.training.device import resolve_device

    device = resolve_device(config.device)
    classes = config.dataset_info.num_classes or 10
    model = build_model(config, classes).to(device)
    size, channels = config.input_size, config.dataset_info.channels
    x = torch.randn(config.batch_size, channels, size, size, device=device)
    y = torch.randint(0, classes, (config.batch_size,), device=device)
    trunk, heads = forward_flops(model, x[:1])
    per_step = 3 * (sum(trunk) + heads[-1]) * config.batch_size  # forward and backward

    def step() -> None:
        model.zero_grad(set_to_none=True)
        h = x
        for module in model.trunk:
            h = module(h)
        F.cross_entropy(model.heads[-1](h), y).backward()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        best = min(best, time.perf_counter() - start)
    return steps * per_step / max(best, 1e-9)


Variants = Mapping[str, Mapping[str, Any]]


def choose_size(
    base: Config,
    variants: Variants | Callable[[Config], Variants],
    ladder: Sequence[Mapping[str, Any]],
    budget_minutes: float,
    seeds: int,
    flops_per_s: float | None = None,
) -> SizeChoice:
    """The largest rung of `ladder` whose series (every variant, `seeds` times) fits in
    `budget_minutes` on `base.device`; the smallest when none does. `variants` may depend on
    the rung (a function of its config: a module per block needs the block count).
    `flops_per_s` defaults to the device's measured speed on the smallest rung's network."""
    from workbench.training.device import resolve_device

    if not ladder:
        raise ValueError("ladder: got no sizes; allowed: one dict of Config fields or more")
    if flops_per_s is None:
        flops_per_s = measured_flops_per_s(base.replace(**ladder[0]))
    budget = budget_minutes * 60
    estimates = []
    for rung in ladder:
        config = base.replace(**rung)
        of_rung = variants(config) if callable(variants) else variants
        estimates.append((dict(rung), series_seconds(config, of_rung, seeds, flops_per_s)))
    fitting = [e for e in estimates if e[1] <= budget]
    values, seconds = fitting[-1] if fitting else estimates[0]
    device = str(resolve_device(base.device))
    return SizeChoice(values, seconds, budget, flops_per_s, device, estimates)
