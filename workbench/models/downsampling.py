"""Downsampling ops: Belilovsky's invertible psi and the lossy alternatives it is compared with."""

from __future__ import annotations

from torch import Tensor, nn


class InvertibleDownsampling(nn.Module):
    """psi: 2x2 space-to-depth, C x H x W -> 4C x H/2 x W/2. No information is lost."""

    def __init__(self) -> None:
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.unshuffle(x)

    @staticmethod
    def inverse(y: Tensor) -> Tensor:
        """psi^-1: depth-to-space, the exact inverse of forward."""
        return nn.functional.pixel_shuffle(y, 2)


def make_downsampling(op: str) -> tuple[nn.Module | None, int, int]:
    """(module applied before the layer, channel factor it adds, stride the layer's conv takes).

    `stride` has no separate op: the layer's own convolution strides by 2 instead.
    """
    if op == "invertible":
        return InvertibleDownsampling(), 4, 1
    if op == "maxpool":
        return nn.MaxPool2d(2), 1, 1
    if op == "avgpool":
        return nn.AvgPool2d(2), 1, 1
    if op == "stride":
        return None, 1, 2
    raise ValueError(f"downsampling: got {op!r}")
