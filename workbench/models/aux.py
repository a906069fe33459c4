"""Auxiliary heads: the small classifiers that give each module its local loss.

Depth k counts the head's hidden layers as in Belilovsky et al.: k = 1 is a spatial average to
2x2 and a linear layer; each further level adds one layer of the chosen family (DGL's study):
`cnn` a 3x3 conv + BN + ReLU, `mlp` a linear + BN + ReLU on the 2x2 average, `mlp-sr` a 1x1
conv + BN + ReLU after averaging down to 4x4. k = 0 is a global average and a linear layer.
"""

from __future__ import annotations

from torch import nn


def make_aux_head(
    in_channels: int, num_classes: int, depth: int, kind: str, width: int
) -> nn.Sequential:
    """An auxiliary classifier of depth `depth` on `in_channels` feature maps."""
    if depth == 0:
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes)
        )
    hidden = depth - 1
    if hidden == 0:
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * in_channels, num_classes)
        )
    layers: list[nn.Module] = []
    c = in_channels
    if kind == "mlp":
        layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten()]
        c *= 4
        for _ in range(hidden):
            layers += [nn.Linear(c, width, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
            c = width
        return nn.Sequential(*layers, nn.Linear(c, num_classes))
    if kind == "mlp-sr":  # spatial reduction first, so the 1x1 convs stay cheap
        layers.append(nn.AdaptiveAvgPool2d(4))
    size = 3 if kind == "cnn" else 1
    for _ in range(hidden):
        layers += [
            nn.Conv2d(c, width, size, 1, size // 2, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ]
        c = width
    return nn.Sequential(
        *layers,
        nn.AdaptiveAvgPool2d(2),
        nn.BatchNorm2d(c),
        nn.Flatten(),
        nn.Linear(4 * c, num_classes),
    )
