"""Where and how a run computes: the device, its precision, its CUDA settings, memory format."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from workbench.config import Config, ConfigError
from workbench.models import archs


def resolve_device(name: str) -> torch.device:
    """`auto` picks the GPU when there is one; asking for `cuda` without one is a config error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: got 'cuda' but no CUDA GPU is visible; allowed: auto, cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def check_speed_options(config: Config) -> None:
    """Refuse, before any data is loaded, speed options that would change what is computed."""
    if config.cache_features and config.resolved_augment != "none":
        raise ConfigError(
            f"cache_features: got true with augment={config.resolved_augment!r} "
            f"({config.dataset}'s {'default ' if config.augment == 'auto' else ''}augmentation); "
            "allowed: cache_features with augment none (a cache would freeze one augmented "
            "copy of each image), or cache_features false"
        )


PRECISION_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


@dataclass(frozen=True)
class Precision:
    """What a run computes in, and why (summary.json records both)."""

    name: str  # fp32, bf16 or fp16
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype; None for fp32 (no autocast at all)."""
        return PRECISION_DTYPES[self.name]

    @property
    def scaled(self) -> bool:
        """Whether the loss is scaled (torch.amp.GradScaler): fp16's small gradients would
        underflow to zero without it; bf16 has fp32's range and needs none."""
        return self.name == "fp16"


def choose_precision(requested: str, capability: tuple[int, int] | None) -> Precision:
    """The precision a run computes in: `requested` (the config's precision) on a device of
    this CUDA compute capability (None: the CPU). A pure function of the two.

    auto: bf16 autocast from capability 8.0 (A100, H100, RTX 30xx on: native bf16 tensor
    cores); fp16 autocast with loss scaling on 7.x (V100, T4, RTX 20xx: fp16 tensor cores, and
    cuDNN has no bf16 convolutions below 8.0, so bf16 would fall back to slow kernels); fp32
    below 7.0 (no tensor cores) and on the CPU (bf16 measured 0.04-0.08x fp32 on a CPU without
    native bf16). An explicit fp32, bf16 or fp16 is taken as asked.
    """
    where = "the CPU" if capability is None else "compute capability {}.{}".format(*capability)
    if requested != "auto":
        reason = f"precision={requested} asked for, on {where}"
        if requested == "bf16" and capability is not None and capability[0] < 8:
            reason += " (no native bf16 below 8.0: emulated, slow)"
        return Precision(requested, reason)
    if capability is None:
        return Precision("fp32", "auto on the CPU: fp32 (bf16 is emulated on most CPUs)")
    if capability[0] >= 8:
        return Precision("bf16", f"auto on {where}: native bf16 tensor cores")
    if capability[0] == 7:
        return Precision(
            "fp16", f"auto on {where}: fp16 tensor cores, no native bf16; fp16 with loss scaling"
        )
    return Precision("fp32", f"auto on {where}: no tensor cores")


def device_capability(device: torch.device) -> tuple[int, int] | None:
    """The device's CUDA compute capability; None on the CPU."""
    if device.type != "cuda":
        return None
    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def run_precision(config: Config, device: torch.device) -> Precision:
    """The precision `config` runs in on `device` (the run's device, not the current one)."""
    return choose_precision(config.precision, device_capability(device))


def tf32_in_effect(tf32: bool, capability: tuple[int, int] | None) -> bool:
    """Whether fp32 convolutions and matmuls run as TF32: asked for (config.tf32) on a GPU that
    has TF32 tensor cores (compute capability 8.0 and above)."""
    return tf32 and capability is not None and capability[0] >= 8


def backend_settings(device: torch.device, tf32: bool) -> list[tuple[Any, str, Any]]:
    """(object, attribute, value) of the process-wide CUDA settings a run on `device` uses:
    cuDNN's autotuner (each run's shapes are fixed, its case), and TF32 chosen alike for
    convolutions and matmuls (PyTorch's defaults differ: TF32 convolutions, fp32 matmuls, so
    the VGG and MLP heads ran at a fraction of the convolutions' speed). None on the CPU."""
    if device.type != "cuda":
        return []
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch 2.9+: mixing it with allow_tf32 is an error
        value = "tf32" if tf32 else "ieee"
        tf32_flags = [(matmul, "fp32_precision", value), (cudnn.conv, "fp32_precision", value)]
    else:
        tf32_flags = [(matmul, "allow_tf32", tf32), (cudnn, "allow_tf32", tf32)]
    return [(cudnn, "benchmark", True), *tf32_flags]


@contextlib.contextmanager
def applied(settings: list[tuple[Any, str, Any]]) -> Iterator[None]:
    """The settings made for the block, and put back as they were after it (a notebook's
    later cells see the kernel's own)."""
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in settings]
    try:
        for obj, name, value in settings:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


def memory_format(config: Config, device: torch.device) -> torch.memory_format:
    """NHWC on CUDA, the layout cuDNN's tensor-core convolutions use. On the CPU, NHWC for
    plain trunks (greedy CNN, VGG) and NCHW for ResNets: `workbench bench` measured oneDNN's
    NHWC at 1.07-1.13x in training and 1.2-1.5x in evaluation for the plain nets, but 0.87x in
    training for ResNet-20 (2-core AVX2 CPU, CIFAR-10)."""
    if not config.channels_last:
        return torch.contiguous_format
    if device.type == "cuda" or archs.ARCHITECTURES[config.arch].kind == "plain":
        return torch.channels_last
    return torch.contiguous_format


def evaluation_memory_format(config: Config, device: torch.device) -> torch.memory_format:
    """NHWC for evaluation wherever channels_last is on, ResNets on the CPU included: there
    oneDNN's NHWC inference measured 1.3-1.6x NCHW for ResNet-20 (while its training is
    slower), so a CPU ResNet switches layout for evaluation and back (milliseconds)."""
    return torch.channels_last if config.channels_last else torch.contiguous_format


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for the work `device` has queued (nothing to wait for on the CPU). It holds the
    device alone, so whatever keeps it (a run's Clock) keeps no run's model or data alive."""
    if device.type != "cuda":
        return _nothing
    return functools.partial(torch.cuda.synchronize, device)


def _nothing() -> None:
    return None


def compiler(config: Config) -> Callable[[Any], Any]:
    """torch.compile when the config asks for it, else the callable as it is. Compiled
    callables share the modules' parameters, so state dicts are untouched."""
    return torch.compile if config.compile else (lambda f: f)
