"""Trunk units (conv layers, residual blocks) and how they are grouped into modules.

A trunk is a list of *units*: Belilovsky's conv layers, the blocks of a ResNet or the conv layers
of a VGG. A downsampling position j (1-indexed) means unit j's input is downsampled. Units are
then shared out, in order, into `n_modules` locally supervised modules.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from workbench.config import Config, n_units
from workbench.models.downsampling import make_downsampling

VGG_PLANS = {  # conv widths at width=64; the plain VGGs' pools sit before the units in
    "vgg11": [64, 128, 256, 256, 512, 512, 512, 512],  # standard_positions()
    "vgg13": [64, 64, 128, 128, 256, 256, 512, 512, 512, 512],
}
RESNET18_BLOCKS = 8  # 4 stages of 2 basic blocks


class ConvLayer(nn.Module):
    """One layer of Belilovsky's CNN (and of VGG): x -> ReLU(BN(W P x))."""

    def __init__(self, in_channels: int, out_channels: int, down: str | None, batchnorm: bool):
        super().__init__()
        pre, factor, stride = make_downsampling(down) if down else (None, 1, 1)
        self.down = pre or nn.Identity()
        self.conv = nn.Conv2d(in_channels * factor, out_channels, 3, stride, 1, bias=not batchnorm)
        self.bn = nn.BatchNorm2d(out_channels) if batchnorm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.bn(self.conv(self.down(x))))


class BasicBlock(nn.Module):
    """Residual block: out = ReLU(shortcut(P x) + r), r = BN(conv(ReLU(BN(conv(P x))))).

    r is the residual branch TRGL's kinetic term penalises. When the block downsamples or widens,
    the shortcut is a 1x1 conv + BN (He et al.'s option B).
    """

    def __init__(self, in_channels: int, out_channels: int, down: str | None):
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
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward_residual(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(block output, residual branch output r before the skip addition and the ReLU)."""
        x = self.down(x)
        r = self.branch(x)
        return torch.relu(self.shortcut(x) + r), r

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_residual(x)[0]


class TrunkModule(nn.Sequential):
    """A group of consecutive units trained together against one auxiliary head."""

    def forward_with_kinetic(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(output, kinetic energy): sum over residual blocks m of mean(r_m^2) (TRGL)."""
        energy = x.new_zeros(())
        for unit in self:
            if isinstance(unit, BasicBlock):
                x, r = unit.forward_residual(x)
                energy = energy + r.pow(2).mean()
            else:
                x = unit(x)
        return x, energy


def stem(in_channels: int, width: int) -> nn.Sequential:
    """The ResNets' first 3x3 conv (CIFAR style); it belongs to the first module."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
    )


def build_units(config: Config) -> tuple[list[nn.Module], list[int]]:
    """The trunk's units in order (a ResNet's stem first) and each one's output channels."""
    info = config.dataset_info
    op = config.resolved_downsampling
    positions = set(config.downsampling_positions())
    width = config.resolved_width
    units: list[nn.Module] = []
    channels: list[int] = []
    if config.arch in VGG_PLANS:
        c = info.channels
        for j, planned in enumerate(VGG_PLANS[config.arch], start=1):
            out = max(1, planned * width // 64)
            units.append(ConvLayer(c, out, op if j in positions else None, config.batchnorm))
            channels.append(c := out)
        return units, channels
    if config.arch == "greedy-cnn":
        c, out = info.channels, width
        for j in range(1, n_units(config) + 1):
            down = op if j in positions else None
            if down and j > 1:  # the conv maps 4C -> 2C: width doubles (not on the raw image)
                out *= 2
            units.append(ConvLayer(c, out, down, config.batchnorm))
            channels.append(c := out)
        return units, channels
    # ResNets: a stem, then basic blocks doubling their width at each downsampling
    units.append(stem(info.channels, width))
    channels.append(c := width)
    for j in range(1, n_units(config) + 1):
        down = op if j in positions else None
        out = c * 2 if down else c
        units.append(BasicBlock(c, out, down))
        channels.append(c := out)
    return units, channels


def split_into_modules(config: Config, units: list[nn.Module]) -> list[list[int]]:
    """Indices of the units in each module: consecutive, as even as possible, extras first.

    A ResNet's stem (unit 0) always travels with the first module.
    """
    has_stem = config.arch.startswith("resnet")
    body = list(range(1 if has_stem else 0, len(units)))
    k = config.n_modules
    sizes = [len(body) // k + (1 if i < len(body) % k else 0) for i in range(k)]
    groups, start = [], 0
    for size in sizes:
        groups.append(body[start : start + size])
        start += size
    if has_stem:
        groups[0].insert(0, 0)
    return groups
