"""DGL's `mlp` head: a 2x2 average, then an MLP. DGL's is depth 4 with M~ = C (three hidden
layers of width 4C); its last-layer head is depth 3."""

from __future__ import annotations

from typing import Any

NAME = "mlp"
DEPTH = "average to 2x2, (k-1) x [linear 4M~, BN1d, ReLU], linear"
PLACE = "any"
POSITION = 1


def build(spec: Any) -> Any:
    from torch import nn

    from workbench.models.heads._parts import mlp

    c, hidden = spec.in_channels, spec.depth - 1
    pool: list[nn.Module] = [nn.AdaptiveAvgPool2d(2), nn.Flatten()]
    return nn.Sequential(
        *pool, *mlp(4 * c, hidden, 4 * spec.width, spec.num_classes, spec.batchnorm)
    )
