"""What each architecture is, in one place: its units, widths, downsampling and shortcuts.

Config validation and model building both read this file (it imports no torch), so adding a
paper's network is one entry in ARCHITECTURES. A trunk is a list of *units*: Belilovsky's conv
layers, a VGG's conv layers or a ResNet's basic blocks (a ResNet's stem comes before them and
travels with the first module). Downsampling position j (1-indexed) means unit j's input is
downsampled; `unit_plan` turns a config into every unit's channels, sizes, op, bias and shortcut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workbench.config import Config


@dataclass(frozen=True)
class Architecture:
    """One architecture family member. `units=0` means the config sets the count."""

    kind: str  # "plain": conv layers (x -> ReLU(BN(W P x))); "resnet": stem + basic blocks
    default_width: int  # first unit's channels when config.width is 0
    downsampling: str  # what downsampling=auto means
    units: int = 0  # fixed unit count; 0: config.n_units, else (greedy-cnn) n_modules / (resnet) 9
    widths: tuple[int, ...] = ()  # plain nets with a fixed plan (VGG): each unit's width at 64
    positions: tuple[int, ...] = ()  # fixed standard downsampling positions (VGG, ResNet-18)
    shortcut: str = ""  # resnets: what shortcut=auto means, "A" (pad and subsample) or "B" (1x1)
    fc: tuple[int, ...] = ()  # plain nets: fully connected units after the convs (their widths)
    summary: str = ""

    @property
    def configurable_depth(self) -> bool:
        return self.units == 0


def _cifar_resnet(depth: int) -> Architecture:
    n = (depth - 2) // 6
    return Architecture(
        "resnet", 16, "stride", units=3 * n, shortcut="A",
        summary=f"He et al.'s CIFAR ResNet-{depth}: 3 stages of {n} basic blocks, widths 16/32/64",
    )  # fmt: skip


ARCHITECTURES: dict[str, Architecture] = {
    "greedy-cnn": Architecture(
        "plain", 32, "invertible",
        summary="Belilovsky's CNN: 3x3 conv layers (n_units, default one per module), width "
        "doubling at each downsampling after the input",
    ),
    **{f"resnet{d}": _cifar_resnet(d) for d in (20, 32, 56, 110)},
    "resnet": Architecture(
        "resnet", 16, "stride", shortcut="A",
        summary="a CIFAR ResNet with any number of basic blocks (n_units, default 9) in 3 stages",
    ),
    "resnet18": Architecture(
        "resnet", 64, "stride", units=8, positions=(3, 5, 7), shortcut="B",
        summary="ResNet-18 (4 stages of 2 basic blocks, 1x1-conv shortcuts) with a 3x3 stem",
    ),
    "vgg11": Architecture(
        "plain", 64, "maxpool", units=8, widths=(64, 128, 256, 256, 512, 512, 512, 512),
        positions=(2, 3, 5, 7), summary="VGG-11 with BN (8 conv layers, max-pool downsampling)",
    ),
    "vgg13": Architecture(
        "plain", 64, "maxpool", units=10,
        widths=(64, 64, 128, 128, 256, 256, 512, 512, 512, 512),
        positions=(3, 5, 7, 9), summary="VGG-13 with BN (10 conv layers, max-pool downsampling)",
    ),
    "vgg8b": Architecture(
        "plain", 128, "maxpool", units=7, widths=(64, 128, 128, 256, 256, 256), fc=(1024,),
        positions=(3, 5, 6, 7),
        summary="Nokland and Eidnes' VGG8b (PredSim): 6 conv layers 128,256,256,512,512,512, "
        "max-pool after layers 2, 4, 5 and 6, then a 1024-unit fully connected layer",
    ),
}  # fmt: skip
ARCHS = tuple(ARCHITECTURES)
DEFAULT_RESNET_UNITS = 9  # `resnet` with n_units=0 is ResNet-20


@dataclass(frozen=True)
class UnitSpec:
    """One trunk unit as the model builder makes it (kind "stem", "conv" or "block")."""

    kind: str
    in_channels: int
    out_channels: int
    down: str | None  # the op applied to the unit's input, None to keep the size
    size: int  # output height (== width)
    bias: bool = False
    batchnorm: bool = True
    shortcut: str = ""  # blocks: "A" or "B"
    activation: str = "relu"  # plain units: relu or leaky-relu
    dropout: float = 0.0  # plain units: dropout on the input (the previous unit's output)


def architecture(config: Config) -> Architecture:
    return ARCHITECTURES[config.arch]


def unit_count(config: Config) -> int:
    """How many units (conv layers / residual blocks) the trunk has, stem excluded."""
    arch = architecture(config)
    if arch.units:
        return arch.units
    if config.n_units:
        return config.n_units
    return config.n_modules if arch.kind == "plain" else DEFAULT_RESNET_UNITS


def stage_sizes(total: int, stages: int = 3) -> list[int]:
    """Blocks per stage: as even as possible, extras in the first stages."""
    return [total // stages + (1 if i < total % stages else 0) for i in range(stages)]


def standard_positions(config: Config, size: int) -> list[int]:
    """The architecture's usual downsampling positions (1-indexed units)."""
    arch = architecture(config)
    if arch.positions:
        return list(arch.positions)
    total = unit_count(config)
    if arch.kind == "resnet":  # the first block of stages 2 and 3
        first, second, _ = stage_sizes(total)
        return [p for p in (first + 1, first + second + 1) if p <= total]
    # greedy CNN: psi on the input, then before every second layer (1, 3, 5, ...), while the
    # maps stay at least 4x4
    limit = max(0, int(math.log2(size)) - 2)
    return list(range(1, total + 1, 2))[:limit]


def accelerated_positions(standard: list[int]) -> list[int]:
    """Ma et al.'s remedy made concrete: each downsampling moves to half its depth.

    Position p becomes ceil(p / 2), kept strictly increasing, so the same number of
    downsamplings happen earlier and the deeper modules work on smaller, wider maps.
    """
    moved: list[int] = []
    for p in standard:
        moved.append(max(math.ceil(p / 2), (moved[-1] + 1) if moved else 1))
    return moved


def resolve_schedule(config: Config, size: int) -> list[int]:
    if config.schedule == "standard":
        return standard_positions(config, size)
    if config.schedule == "accelerated":
        return accelerated_positions(standard_positions(config, size))
    return [int(p) for p in config.schedule.split(",") if p.strip()]


def resolved_downsampling(config: Config) -> str:
    if config.downsampling != "auto":
        return config.downsampling
    return architecture(config).downsampling


def resolved_shortcut(config: Config) -> str:
    """A resnet's shortcut type: `auto` is the architecture's own, B wherever psi is used
    (psi widens a block's input to 4C, beyond its 2C output: no zero-padding shortcut fits)."""
    if config.shortcut != "auto":
        return config.shortcut
    if resolved_downsampling(config) == "invertible":
        return "B"
    return architecture(config).shortcut or "B"


def _conv_bias(config: Config, j: int) -> bool:
    """Whether plain unit j's conv has a bias (`auto`: exactly where no BN follows)."""
    if config.conv_bias == "auto":
        return not config.batchnorm
    if config.conv_bias == "first":  # layerCNN's CIFAR code: only the input layer has one
        return j == 1
    return config.conv_bias == "all"


def unit_plan(config: Config, size: int, in_channels: int) -> list[UnitSpec]:
    """Every unit of the trunk in order (a ResNet's stem first), for images of `size` pixels."""
    arch = architecture(config)
    op = resolved_downsampling(config)
    positions = set(resolve_schedule(config, size))
    width = config.width or arch.default_width
    plan: list[UnitSpec] = []
    c = in_channels
    if arch.kind == "resnet":
        plan.append(UnitSpec("stem", c, width, None, size))
        c = width
    n_convs = unit_count(config) - len(arch.fc)
    for j in range(1, unit_count(config) + 1):
        down = op if j in positions else None
        if down:
            size //= 2
        if j > n_convs:  # a fully connected unit: maps flattened in, a 1x1 map out
            fc = arch.fc[j - n_convs - 1]
            features = c * (4 if down == "invertible" else 1) * size * size  # psi: 4C channels
            plan.append(
                UnitSpec("fc", features, fc, down, 1, True, config.batchnorm,
                         activation=config.activation, dropout=config.dropout)
            )  # fmt: skip
            c, size = fc, 1
            continue
        if arch.widths:
            out = max(1, arch.widths[j - 1] * width // 64)
        elif down and (j > 1 or arch.kind == "resnet"):  # not on the raw image (Belilovsky)
            out = c * 2
        else:
            out = width if j == 1 else c
        if arch.kind == "resnet":
            plan.append(UnitSpec("block", c, out, down, size, shortcut=resolved_shortcut(config)))
        else:
            bias = _conv_bias(config, j)
            dropout = config.dropout if j > 1 else 0.0
            plan.append(
                UnitSpec("conv", c, out, down, size, bias, config.batchnorm,
                         activation=config.activation, dropout=dropout)
            )  # fmt: skip
        c = out
    return plan


def module_map_sizes(config: Config) -> list[int]:
    """The side, in pixels, of each module's output maps."""
    plan = unit_plan(config, config.input_size, config.dataset_info.channels)
    return [plan[group[-1]].size for group in module_groups(config, len(plan))]


def module_ends(config: Config) -> list[int] | None:
    """Where modules 1..K-1 end, in units (blocks or conv layers) from the start, as
    `module_ends` gives them (0: right after a ResNet's stem); None for equal shares."""
    if config.module_ends == "auto":
        return None
    return [int(p) for p in config.module_ends.split(",")]


def module_groups(config: Config, n_plan_units: int) -> list[list[int]]:
    """Indices (into unit_plan) of each module's units: consecutive, as even as possible,
    extras first, or ending where `module_ends` says (InfoPro's split points are not equal
    shares). A ResNet's stem (index 0) always travels with the first module."""
    has_stem = architecture(config).kind == "resnet"
    body = list(range(1 if has_stem else 0, n_plan_units))
    ends = module_ends(config)
    if ends is None:
        sizes = stage_sizes(len(body), config.n_modules)
    else:
        bounds = [0, *ends, len(body)]
        sizes = [b - a for a, b in zip(bounds, bounds[1:])]
    groups, start = [], 0
    for n in sizes:
        groups.append(body[start : start + n])
        start += n
    if has_stem:
        groups[0].insert(0, 0)
    return groups
