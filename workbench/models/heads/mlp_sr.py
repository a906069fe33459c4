"""DGL's `mlp-sr` head: spatial reduction first, so its 1x1 convolutions stay cheap, then the
mlp head. DGL's is depth 4 with M~ = C."""

from __future__ import annotations

import math
from typing import Any

NAME = "mlp-sr"
DEPTH = (
    "average to ceil(H/4), 3 x [1x1 conv M~ (no bias), BN, ReLU], average to 2x2, then the "
    "mlp head's (k-1) hidden layers and linear"
)
PLACE = "any"
POSITION = 2


def build(spec: Any) -> Any:
    from torch import nn

    from workbench.models.heads._parts import bn2d, mlp

    c, width, batchnorm = spec.in_channels, spec.width, spec.batchnorm
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(math.ceil(spec.size / 4))]
    for _ in range(3):
        layers += [nn.Conv2d(c, width, 1, bias=False), bn2d(width, batchnorm), nn.ReLU()]
        c = width
    layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten()]
    hidden = spec.depth - 1
    return nn.Sequential(*layers, *mlp(4 * c, hidden, 4 * width, spec.num_classes, batchnorm))
