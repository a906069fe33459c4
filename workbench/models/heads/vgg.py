"""VGG's classifier as DGL's ImageNet VGG-13 last layer has it (no dropout there); its depth
is fixed."""

from __future__ import annotations

from typing import Any

NAME = "vgg"
DEPTH = "fixed: 2x2 max-pool, linear 4096, ReLU, linear 4096, ReLU, linear (depth ignored)"
PLACE = "last"
POSITION = 10
OWN_DEPTH_ZERO = True  # depth does not change it, 0 included
VGG_HIDDEN = 4096


def build(spec: Any) -> Any:
    from torch import nn

    side = spec.size // 2
    return nn.Sequential(
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(spec.in_channels * side * side, VGG_HIDDEN),
        nn.ReLU(),
        nn.Linear(VGG_HIDDEN, VGG_HIDDEN),
        nn.ReLU(),
        nn.Linear(VGG_HIDDEN, spec.num_classes),
    )
