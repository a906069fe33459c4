"""Where and how a run computes: the device, its precision and memory format, free memory."""

from __future__ import annotations

import os
import resource
import sys

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


def autocast_dtype(config: Config, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default (where bf16 is native), on the CPU only when asked."""
    if config.precision == "bf16":
        return torch.bfloat16
    if config.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


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


def free_memory_bytes(device: torch.device) -> int:
    """Free device memory on CUDA; the RAM the kernel says is available on the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")  # free pages: a floor


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA's max allocated bytes on a GPU; the process's peak resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
