"""A device's memory as a run sees it: what is free for it, and the run's own peak.

Below data and training alike: the data decides from it whether a dataset lives on the device,
the engine how much it may cache. On CUDA, memory PyTorch's caching allocator reserved but no
longer uses counts as free (it is this process's to reuse), and peaks are reset per run, so a
second run in one kernel sees what the first one freed and reports its own peak.
"""

from __future__ import annotations

import os
import resource
import sys

import torch


def cuda_free_bytes(driver_free: int, reserved: int, allocated: int) -> int:
    """Free memory for this process on a GPU: what the driver says is free plus the blocks
    the caching allocator holds without using them (reserved - allocated)."""
    return driver_free + max(0, reserved - allocated)


def free_memory_bytes(device: torch.device) -> int:
    """Free device memory on CUDA (the allocator's unused cache included); the RAM the kernel
    says is available on the CPU."""
    if device.type == "cuda":
        driver_free, _ = torch.cuda.mem_get_info(device)
        reserved = torch.cuda.memory_reserved(device)
        return cuda_free_bytes(driver_free, reserved, torch.cuda.memory_allocated(device))
    available = proc_bytes("/proc/meminfo", "MemAvailable")
    if available is not None:
        return available
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")  # free pages: a floor


def proc_bytes(path: str, field: str) -> int | None:
    """A `field:  N kB` line of a Linux /proc file (meminfo, self/status) in bytes; None
    where there is no such file or line."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_memory(device: torch.device) -> None:
    """Start counting a new peak: CUDA's max allocated bytes, or this process's peak resident
    set on Linux (writing 5 to /proc/self/clear_refs resets it); elsewhere the CPU's peak stays
    the process's since it started."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA's max allocated bytes on a GPU; the process's peak resident set on the CPU, both
    since the last reset_peak_memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = proc_bytes("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
