"""The linear head: a global average and a linear layer (every family's depth 0)."""

from __future__ import annotations

from typing import Any

NAME = "linear"
DEPTH = "always one weight layer: global average, linear"
PLACE = None  # not a choice of its own: aux_depth 0 of any family but vgg
POSITION = 90


def build(spec: Any) -> Any:
    from torch import nn

    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(spec.in_channels, spec.num_classes)
    )
