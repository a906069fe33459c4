"""TRGL's "1CNN" head: convolutions without BN, an average pool with a fixed kernel, BN,
linear. TRGL's is depth 2 with M~ = C. The kernel is theirs: 16 on maps of 48 px and more,
else 8 (STL-10's 96/48/24 px maps pool to 6x6, 3x3, 3x3). Their scripts set it per module
(`apc`), which `aux_pool` does here: "16,8" pools a CIFAR ResNet's 16 and 8 px maps to 1x1, as
their STL-10 script run on CIFAR-10 does."""

from __future__ import annotations

from typing import Any

NAME = "1cnn"
DEPTH = "(k-1) x [3x3 conv M~ (no bias), ReLU], average pool (fixed kernel), BN, linear"
PLACE = "any"
POSITION = 3


def trgl_pool_kernel(size: int) -> int:
    """TRGL's 1CNN average-pool kernel for maps of `size` pixels (their STL-10 `apc`)."""
    return 16 if size >= 48 else min(8, size)


def build(spec: Any) -> Any:
    from torch import nn

    from workbench.models.heads._parts import bn2d, convs

    layers = convs(spec.in_channels, spec.depth - 1, spec.width, batchnorm=None)
    c = spec.width if spec.depth > 1 else spec.in_channels
    kernel = spec.pool_kernel or trgl_pool_kernel(spec.size)
    side = spec.size // kernel
    return nn.Sequential(
        *layers,
        nn.AvgPool2d(kernel),
        bn2d(c, spec.batchnorm),
        nn.Flatten(),
        nn.Linear(c * side * side, spec.num_classes),
    )
