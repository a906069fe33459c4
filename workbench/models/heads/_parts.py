"""Layers the head families share (imported by their builders, so it may import torch)."""

from __future__ import annotations

from torch import nn


def mlp(c: int, hidden: int, width: int, num_classes: int, batchnorm: bool) -> list[nn.Module]:
    """`hidden` x [linear `width`, BN1d, ReLU], then the linear classifier."""
    layers: list[nn.Module] = []
    for _ in range(hidden):
        layers += [nn.Linear(c, width), nn.BatchNorm1d(width) if batchnorm else nn.Identity()]
        layers.append(nn.ReLU())
        c = width
    return [*layers, nn.Linear(c, num_classes)]


def bn2d(c: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(c) if batchnorm else nn.Identity()


def convs(c: int, hidden: int, width: int, batchnorm: bool | None) -> list[nn.Module]:
    """`hidden` x [3x3 conv `width` (no bias), BN (unless batchnorm is None), ReLU]."""
    layers: list[nn.Module] = []
    for _ in range(hidden):
        layers.append(nn.Conv2d(c, width, 3, 1, 1, bias=False))
        if batchnorm is not None:
            layers.append(bn2d(width, batchnorm))
        layers.append(nn.ReLU())
        c = width
    return layers
