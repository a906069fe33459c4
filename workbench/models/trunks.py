"""Trunk units (conv layers, fully connected layers, residual blocks, the ResNet stem), built
from `archs.unit_plan`.

What a trunk is (its units' widths, sizes, downsampling, bias and shortcut type) is decided in
`archs.py`; this file only turns each UnitSpec into layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.models.archs import UnitSpec
from workbench.models.downsampling import make_downsampling


def activation(name: str) -> nn.Module:
    """A plain unit's nonlinearity: ReLU, or leaky ReLU of slope 0.01 (PredSim's recipes)."""
    return nn.LeakyReLU(0.01) if name == "leaky-relu" else nn.ReLU()


class ConvLayer(nn.Module):
    """One layer of Belilovsky's CNN (and of VGG): x -> act(BN(W P D x)).

    D is dropout of the input, that is of the previous unit's output after that unit's local
    loss has seen it (PredSim's blocks drop their output once their loss is computed; a
    channel dropped before a max-pool is the same channel dropped after it)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        down: str | None,
        batchnorm: bool,
        bias: bool | None = None,  # None: a bias exactly where no BN follows
        nonlinearity: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        pre, factor, stride = make_downsampling(down) if down else (None, 1, 1)
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.down = pre or nn.Identity()
        bias = not batchnorm if bias is None else bias
        self.conv = nn.Conv2d(in_channels * factor, out_channels, 3, stride, 1, bias=bias)
        self.bn = nn.BatchNorm2d(out_channels) if batchnorm else nn.Identity()
        self.act = activation(nonlinearity)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(self.down(self.dropout(x)))))


class FullyConnectedLayer(nn.Module):
    """A fully connected unit after the convs (VGG8b's 1024): the maps (dropped out and
    downsampled as a conv layer's input is) flattened, linear, BN, act; its output is a 1x1 map
    of its width, so heads, objectives and the next unit treat it as any map."""

    def __init__(self, spec: UnitSpec):
        super().__init__()
        pre, _, stride = make_downsampling(spec.down) if spec.down else (None, 1, 1)
        self.dropout = nn.Dropout2d(spec.dropout) if spec.dropout else nn.Identity()
        # no conv to stride: `stride` keeps every second row and column
        self.down = pre or (nn.AvgPool2d(1, stride) if stride > 1 else nn.Identity())
        self.linear = nn.Linear(spec.in_channels, spec.out_channels, bias=spec.bias)
        self.bn = nn.BatchNorm1d(spec.out_channels) if spec.batchnorm else nn.Identity()
        self.act = activation(spec.activation)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.bn(self.linear(self.down(self.dropout(x)).flatten(1))))
        return h[:, :, None, None]


class ZeroPadShortcut(nn.Module):
    """He et al.'s option A: subsample by the stride and append zero channels; no weights.

    As TRGL's and DDG's code do it: x[:, :, ::2, ::2] (their AvgPool2d(1, 2)), then the new
    channels are zeros after the old ones.
    """

    def __init__(self, extra_channels: int, stride: int):
        super().__init__()
        self.extra, self.stride = extra_channels, stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class BasicBlock(nn.Module):
    """Residual block: out = ReLU(shortcut(P x) + r), r = BN(conv(ReLU(BN(conv(P x))))).

    r is the residual branch TRGL's kinetic term penalises. When the block downsamples or
    widens, the shortcut is option A (subsample, zero channels) or B (1x1 conv + BN).
    """

    def __init__(self, in_channels: int, out_channels: int, down: str | None, shortcut: str = "B"):
        super().__init__()
        pre, factor, stride = make_downsampling(down) if down else (None, 1, 1)
        self.down = pre or nn.Identity()
        c_in = in_channels * factor
        self.branch = nn.Sequential(
            nn.Conv2d(c_in, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != out_channels:
            if shortcut == "A":
                self.shortcut = ZeroPadShortcut(out_channels - c_in, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(c_in, out_channels, 1, stride, bias=False),
                    nn.BatchNorm2d(out_channels),
                )

    def forward_residual(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(block output, residual branch output r before the skip addition and the ReLU)."""
        x = self.down(x)
        r = self.branch(x)
        return torch.relu(self.shortcut(x) + r), r

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_residual(x)[0]


class TrunkModule(nn.Sequential):
    """A group of consecutive units trained together against one auxiliary head (the kinetic
    term reads its residual blocks' branches: local/kinetic.py)."""


def stem(in_channels: int, width: int) -> nn.Sequential:
    """The CIFAR ResNets' first 3x3 conv; it belongs to the first module."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
    )


def build_unit(spec: UnitSpec) -> nn.Module:
    if spec.kind == "stem":
        return stem(spec.in_channels, spec.out_channels)
    if spec.kind == "block":
        return BasicBlock(spec.in_channels, spec.out_channels, spec.down, spec.shortcut)
    if spec.kind == "fc":
        return FullyConnectedLayer(spec)
    return ConvLayer(
        spec.in_channels, spec.out_channels, spec.down, spec.batchnorm, spec.bias,
        spec.activation, spec.dropout,
    )  # fmt: skip
