"""Belilovsky's heads (layerCNN): convolutions, then a 2x2 average and a linear classifier.
DGL's `cnn` head is depth 3 with M~ = C."""

from __future__ import annotations

from typing import Any

NAME = "cnn"
DEPTH = "(k-1) x [3x3 conv M~ (no bias), BN, ReLU], average to 2x2, BN, linear"
PLACE = "any"
POSITION = 0


def build(spec: Any) -> Any:
    from torch import nn

    from workbench.models.heads._parts import bn2d, convs

    layers = convs(spec.in_channels, spec.depth - 1, spec.width, spec.batchnorm)
    c = spec.width if spec.depth > 1 else spec.in_channels
    return nn.Sequential(
        *layers,
        nn.AdaptiveAvgPool2d(2),
        bn2d(c, spec.batchnorm),
        nn.Flatten(),
        nn.Linear(4 * c, spec.num_classes),
    )
