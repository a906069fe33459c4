"""FLOPs: a fact of the model, beside its parameter counts (net.py), so the cost model
(training/estimate.py) and the bench count them alike."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def forward_flops(model: Any, x: Any) -> tuple[list[int], list[int]]:
    """Forward FLOPs (2 x multiply-adds of Conv2d and Linear) per image: modules, then heads."""
    return layer_flops(list(model.trunk), list(model.heads), x)


def layer_flops(
    trunk: list[nn.Module], heads: list[nn.Module], x: Any
) -> tuple[list[int], list[int]]:
    """Forward FLOPs per image of consecutive trunk modules fed x, and of each one's head."""
    counts: dict[nn.Module, int] = {}

    def hook(m: nn.Module, inputs: Any, out: Any) -> None:
        per_image = out.numel() // out.shape[0]
        if isinstance(m, nn.Conv2d):
            macs = per_image * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            macs = per_image * m.in_features
        counts[m] = counts.get(m, 0) + 2 * macs

    parts = [*trunk, *heads]
    layers = [m for part in parts for m in part.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    modes = [part.training for part in parts]
    for part in parts:
        part.eval()
    try:
        with torch.no_grad():
            for module, head in zip(trunk, heads):
                x = module(x)
                head(x)
    finally:
        for h in handles:
            h.remove()
        for part, mode in zip(parts, modes):
            part.train(mode)

    def total(part: nn.Module) -> int:
        return sum(counts.get(m, 0) for m in part.modules())

    return [total(m) for m in trunk], [total(h) for h in heads]
