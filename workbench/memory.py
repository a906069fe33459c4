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
import weakref
from pathlib import Path
from typing import Any

import torch


def cuda_free_bytes(driver_free: int, reserved: int, allocated: int) -> int:
    """Free memory for this process on a GPU: what the driver says is free plus the blocks
    the caching allocator holds without using them (reserved - allocated)."""
    return driver_free + max(0, reserved - allocated)


def free_memory_bytes(device: torch.device) -> int:
    """Free device memory on CUDA (the allocator's unused cache included); on the CPU the RAM
    the kernel says is available, within this process's address-space limit (`ulimit -v`)
    and its cgroup's memory limit (a container's, a SLURM job's) where they are set."""
    if device.type == "cuda":
        driver_free, _ = torch.cuda.mem_get_info(device)
        reserved = torch.cuda.memory_reserved(device)
        return cuda_free_bytes(driver_free, reserved, torch.cuda.memory_allocated(device))
    available = proc_bytes("/proc/meminfo", "MemAvailable")
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")  # a floor
    limits = [available, *cgroup_room()]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(max(0, soft - (proc_bytes("/proc/self/status", "VmSize") or 0)))
    return min(limits)


CGROUP = Path("/sys/fs/cgroup")
V2 = ("memory.max", "memory.current", "inactive_file")  # limit, usage, reclaimable cache
V1 = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")


def cgroup_room(root: Path = CGROUP, own: dict[str, str] | None = None) -> list[int]:
    """Bytes left under the first cgroup memory limit set on this process, if any: the limit
    less the usage the kernel cannot reclaim (the inactive page cache, such as a dataset read
    once, is left out, as Kubernetes' working set leaves it). Looked for in the process's own
    cgroup (a SLURM job's, a systemd unit's), then at the hierarchy's root (a container's own),
    for cgroup v2 then v1. `own`: the process's cgroup paths ({"v2": ..., "memory": ...}, from
    /proc/self/cgroup unless given)."""
    own = _own_cgroups() if own is None else own
    places = [(root / own.get("v2", "/").lstrip("/"), V2), (root, V2)]
    memory = root / "memory"
    places += [(memory / own.get("memory", "/").lstrip("/"), V1), (memory, V1)]
    for folder, (limit_name, usage_name, cache_key) in places:
        try:
            limit = (folder / limit_name).read_text().strip()
            usage = int((folder / usage_name).read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # not "max", nor v1's huge "unlimited"
            cache = _stat_value(folder / "memory.stat", cache_key)
            return [max(0, int(limit) - (usage - cache))]
    return []


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup v2 path (`0::/path`) and v1 memory path (`N:memory:/path`)."""
    found: dict[str, str] = {}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            number, controllers, path = line.split(":", 2)
            if number == "0" and not controllers:
                found["v2"] = path
            elif "memory" in controllers.split(","):
                found["memory"] = path
    except (OSError, ValueError):
        pass
    return found


def _stat_value(path: Path, key: str) -> int:
    """A `key value` line of a cgroup's memory.stat; 0 where there is none."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def keep_budget_bytes(free: int) -> int:
    """What a run may keep of outputs it computed (a frozen prefix's outputs on the test or
    training set) out of `free` bytes: half, the rest is for training itself."""
    return free // 2


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


def _tensor_memory_class() -> type:
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class TensorMemoryMode(TorchDispatchMode):
        """Live and peak bytes of the tensors allocated while active (any device, the meta
        device included: what a step would allocate, without allocating it).

        The CPU has no allocator statistics, and ru_maxrss only ever grows in a process, so
        each op's new output storages are counted until they are freed. Storages an op only
        returns (in-place ops, views) are not new; tensors made before entry are not counted.
        """

        def __init__(self) -> None:
            super().__init__()
            self.live = self.peak = 0
            self.seen: set[int] = set()

        def _freed(self, key: int, nbytes: int) -> None:
            self.seen.discard(key)
            self.live -= nbytes

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            tensors = tree_leaves((args, kwargs))
            inputs = {id(t.untyped_storage()) for t in tensors if isinstance(t, torch.Tensor)}
            for t in tree_leaves(out):
                if not isinstance(t, torch.Tensor):
                    continue
                storage = t.untyped_storage()  # one Python object per storage while it lives
                key = id(storage)
                if key in inputs or key in self.seen:
                    continue
                self.seen.add(key)
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._freed, key, storage.nbytes())
            return out

    return TensorMemoryMode


def tensor_memory() -> Any:
    """A context manager whose `.peak` is the peak bytes of tensors allocated inside it."""
    return _tensor_memory_class()()
