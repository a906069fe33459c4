"""Config validation: every field checked when a Config is built, so a bad value fails in one
line that names the field, the value and what is allowed, before any data is loaded or any
training starts. Choice fields are checked against their FieldInfo's choices first."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from workbench.config import DATASETS, FIELD_CHOICES, MAX_AUX_DEPTH, NORMALIZATIONS, ConfigError
from workbench.local import kinetic
from workbench.models import archs

if TYPE_CHECKING:
    from workbench.config import Config


def _choice(name: str, value: str, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: got {value!r}; allowed: {', '.join(allowed)}")


def _at_least(name: str, value: float, low: float, what: str = "") -> None:
    if not value >= low or math.isnan(value):
        raise ConfigError(f"{name}: got {value!r}; allowed: {what or f'>= {low}'}")


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


def validate(c: Config) -> None:
    """Refuse a bad config in one line naming the field, the value and what is allowed."""
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
    # with module_ends a ResNet's stem may be a module of its own (InfoPro's K = 16)
    most = total + (arch.kind == "resnet" and c.module_ends != "auto")
    if c.n_modules > most:
        raise ConfigError(
            f"n_modules: got {c.n_modules}; allowed: 1 to {most} for {c.arch} "
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
    if arch.kind != "plain":
        for name, plain_only, default in (
            ("activation", c.activation != "relu", "relu (residual blocks keep ReLU)"),
            ("dropout", c.dropout != 0, "0 (residual blocks have no dropout)"),
        ):
            if plain_only:
                raise ConfigError(
                    f"{name}: got {getattr(c, name)!r} for {c.arch}; allowed: {default}; other "
                    "values on plain nets (greedy-cnn, vgg*)"
                )
    if not 0 <= c.dropout < 1:
        raise ConfigError(f"dropout: got {c.dropout!r}; allowed: 0 <= dropout < 1")
    _validate_module_ends(c, total)
    _at_least("aux_width", c.aux_width, 0, "0 (the module's width) or a positive width")
    _validate_aux_pool(c)
    problem = kinetic.check(c)
    if problem:
        raise ConfigError(problem)


def _validate_milestones(c: Config) -> None:
    """lr_milestones: increasing epochs, given exactly when the schedule is milestones."""
    if c.lr_schedule != "milestones":
        if c.lr_milestones:
            raise ConfigError(
                f"lr_milestones: got {c.lr_milestones!r} with lr_schedule {c.lr_schedule!r}; "
                'allowed: "" (or set lr_schedule milestones)'
            )
        return
    allowed = 'increasing positive epochs, like "200,300,350,375"'
    try:
        epochs = [int(e) for e in c.lr_milestones.split(",")]
    except ValueError:
        raise ConfigError(f"lr_milestones: got {c.lr_milestones!r}; allowed: {allowed}") from None
    if epochs[0] < 1 or any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise ConfigError(f"lr_milestones: got {c.lr_milestones!r}; allowed: {allowed}")


def _validate_module_ends(c: Config, total: int) -> None:
    """module_ends: auto, or K-1 increasing unit counts inside the trunk (InfoPro's splits)."""
    if c.module_ends == "auto":
        return
    parts = [p.strip() for p in c.module_ends.split(",")]
    low = 0 if archs.architecture(c).kind == "resnet" else 1  # 0: the stem alone
    ends = [int(p) for p in parts if p.isdigit()]
    if (
        len(ends) != len(parts)
        or len(ends) != c.n_modules - 1
        or any(b <= a for a, b in zip(ends, ends[1:]))
        or (ends and (ends[0] < low or ends[-1] > total - 1))
    ):
        raise ConfigError(
            f"module_ends: got {c.module_ends!r}; allowed: auto, or {c.n_modules - 1} increasing "
            f"unit counts from {low} to {total - 1} (where modules 1..{c.n_modules - 1} of "
            f"{c.arch}'s {total} units end), separated by commas"
        )


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
    for name in ("ixx_1", "ixy_1", "ixx_2", "ixy_2"):
        value = getattr(c, name)
        if not value >= 0 or math.isinf(value):
            raise ConfigError(f"{name}: got {value!r}; allowed: a finite number >= 0")
    if not 0 <= c.beta <= 1:
        raise ConfigError(f"beta: got {c.beta!r}; allowed: 0 <= beta <= 1")
    _at_least("dim_in_decoder", c.dim_in_decoder, 1, "a positive number of values")
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
    _validate_milestones(c)
    if c.momentum_restart and c.lr_schedule != "step":
        raise ConfigError(
            f"momentum_restart: got true with lr_schedule {c.lr_schedule!r}; allowed: true "
            "only with the step schedule (it restarts momentum at each decay)"
        )
    if not 0 <= c.momentum < 1:
        raise ConfigError(f"momentum: got {c.momentum!r}; allowed: 0 <= momentum < 1")
    if c.optimizer == "adam" and c.nesterov:
        raise ConfigError("nesterov: got true with optimizer 'adam'; allowed: false (SGD only)")
    if c.nesterov and c.momentum == 0:
        raise ConfigError("nesterov: got true with momentum 0; allowed: nesterov with momentum > 0")
    _at_least("weight_decay", c.weight_decay, 0, ">= 0")
    if not 0 <= c.label_smoothing < 1:
        raise ConfigError(
            f"label_smoothing: got {c.label_smoothing!r}; allowed: 0 <= label_smoothing < 1"
        )
