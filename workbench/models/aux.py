"""Auxiliary heads: the small classifiers that give each module its local loss.

Depth k counts the head's weight layers, as Belilovsky et al.'s k: k - 1 hidden layers of the
family's kind, then the classifier. k = 0 is a global average and a linear layer (any family).
M~ (`width`) is the hidden width; every family is built exactly as its paper's code builds it:

    cnn     (k-1) x [3x3 conv M~ (no bias), BN, ReLU], average to 2x2, BN, linear.
            Belilovsky's heads (layerCNN); DGL's `cnn` is k=3 with M~ = C.
    mlp     average to 2x2, (k-1) x [linear 4M~, BN1d, ReLU], linear. DGL's `mlp` is k=4 with
            M~ = C (three hidden layers of width 4C); DGL's last-layer head is k=3.
    mlp-sr  average to ceil(H/4), 3 x [1x1 conv M~ (no bias), BN, ReLU], average to 2x2, then
            the mlp part. DGL's `mlp-sr` is k=4 with M~ = C.
    1cnn    (k-1) x [3x3 conv M~ (no bias), ReLU], average pool with a fixed kernel, BN, linear.
            TRGL's "1CNN" is k=2 with M~ = C; the kernel is theirs: 16 on maps of 48 px and
            more, else 8 (STL-10's 96/48/24 px maps pool to 6x6, 3x3, 3x3). Their scripts set
            it per module (`apc`), which `aux_pool` does here: "16,8" pools a CIFAR ResNet's
            16 and 8 px maps to 1x1, as their STL-10 script run on CIFAR-10 does.
    vgg     VGG's classifier: 2x2 max-pool, linear 4096, ReLU, linear 4096, ReLU, linear (DGL's
            ImageNet VGG-13 last layer; no dropout there).

Without BN in the trunk (Belilovsky's k=1 net), `batchnorm=False` drops every BN of the head,
as layerCNN does.
"""

from __future__ import annotations

import math

from torch import nn

VGG_HIDDEN = 4096


def trgl_pool_kernel(size: int) -> int:
    """TRGL's 1CNN average-pool kernel for maps of `size` pixels (their STL-10 `apc`)."""
    return 16 if size >= 48 else min(8, size)


def _mlp(c: int, hidden: int, width: int, num_classes: int, batchnorm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for _ in range(hidden):
        layers += [nn.Linear(c, width), nn.BatchNorm1d(width) if batchnorm else nn.Identity()]
        layers.append(nn.ReLU())
        c = width
    return [*layers, nn.Linear(c, num_classes)]


def _bn2d(c: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(c) if batchnorm else nn.Identity()


def make_aux_head(
    in_channels: int,
    num_classes: int,
    depth: int,
    kind: str,
    width: int,
    size: int = 32,
    batchnorm: bool = True,
    pool_kernel: int | None = None,
) -> nn.Sequential:
    """An auxiliary classifier of depth `depth` on `in_channels` maps of `size` x `size`;
    `pool_kernel` sets a 1cnn head's average-pool kernel (default: TRGL's by size)."""
    c = in_channels
    if depth == 0 and kind != "vgg":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))
    hidden = depth - 1
    if kind == "vgg":
        side = size // 2
        return nn.Sequential(
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c * side * side, VGG_HIDDEN),
            nn.ReLU(),
            nn.Linear(VGG_HIDDEN, VGG_HIDDEN),
            nn.ReLU(),
            nn.Linear(VGG_HIDDEN, num_classes),
        )
    if kind == "mlp":
        pool: list[nn.Module] = [nn.AdaptiveAvgPool2d(2), nn.Flatten()]
        return nn.Sequential(*pool, *_mlp(4 * c, hidden, 4 * width, num_classes, batchnorm))
    if kind == "mlp-sr":  # spatial reduction first, so the 1x1 convs stay cheap
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(math.ceil(size / 4))]
        for _ in range(3):
            layers += [nn.Conv2d(c, width, 1, bias=False), _bn2d(width, batchnorm), nn.ReLU()]
            c = width
        layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten()]
        return nn.Sequential(*layers, *_mlp(4 * c, hidden, 4 * width, num_classes, batchnorm))
    layers = []
    for _ in range(hidden):
        layers.append(nn.Conv2d(c, width, 3, 1, 1, bias=False))
        if kind == "cnn":
            layers.append(_bn2d(width, batchnorm))
        layers.append(nn.ReLU())
        c = width
    if kind == "1cnn":
        kernel = pool_kernel or trgl_pool_kernel(size)
        side = size // kernel
        return nn.Sequential(
            *layers,
            nn.AvgPool2d(kernel),
            _bn2d(c, batchnorm),
            nn.Flatten(),
            nn.Linear(c * side * side, num_classes),
        )
    return nn.Sequential(
        *layers,
        nn.AdaptiveAvgPool2d(2),
        _bn2d(c, batchnorm),
        nn.Flatten(),
        nn.Linear(4 * c, num_classes),
    )
