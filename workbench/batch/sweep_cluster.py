"""Where a sweep's points run: a dask.distributed cluster, on this machine or on many.

connect() gives a Client: by default to a LocalCluster of N single-threaded worker processes
here, or to the cluster whose scheduler is at `--scheduler` (from `dask scheduler` + `dask
worker`, dask-jobqueue on SLURM, dask-kubernetes). run_point() is the task the sweep submits
once per point: on its worker it starts the point's own process (workbench.batch.sweep_point),
waits for it, and stops it (which stops its kernel and records the point as stopped) when the
sweep sets its stop Event, or when the scheduler cancelled the task because the sweep's client
went away. The point folders are written by the workers, so they must be on storage every
worker sees, under the same path.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distributed import Client, Event, LocalCluster, get_client, get_worker
from distributed.comm.addressing import get_address_host
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.worker import thread_state

from workbench.batch.sweep_point import STOPPED_ERROR, first_line, now
from workbench.records import Status, read_json_quietly

SCHEDULER_TIMEOUT_S = 5  # an unreachable scheduler is an error after this long, not a hang
POLL_S = 0.5  # how often a running point looks for a stop
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
NOT_STARTED = "not started"  # a task that found the sweep stopping before its point began
_ADDRESS = re.compile(r"^[a-z][a-z0-9+]*://\S+$")  # tcp://HOST:PORT, tls://..., ucx://...


def check_scheduler(scheduler: str) -> None:
    """Refuse (SweepError, one line) what is neither a scheduler address nor a scheduler file."""
    from workbench.batch.sweep_grid import SweepError  # not on import: workers need no torch

    if not (_ADDRESS.match(scheduler) or Path(scheduler).is_file()):
        raise SweepError(
            f"scheduler: got {scheduler!r}; allowed: a Dask scheduler's address such as "
            "tcp://HOST:8786 (what `dask scheduler` prints), or the file its --scheduler-file "
            "wrote"
        )


class IgnoreInterrupts(WorkerPlugin):
    """A LocalCluster's workers share the terminal's process group: a Ctrl-C is the sweep's to
    handle (it stops the points), not a reason for each worker to die on its own."""

    def setup(self, worker: Any) -> None:  # runs in the worker process's main thread
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def connect(scheduler: str | None, workers: int) -> Iterator[Client]:
    """A Client to the sweep's cluster, closed (a LocalCluster with it) on the way out.

    scheduler None: a LocalCluster of `workers` processes with one thread each, so each runs
    one point at a time (the scheduler hands a worker no second task while it is busy).
    """
    import dask

    from workbench.batch.sweep_grid import SweepError

    if scheduler is not None:
        try:
            if Path(scheduler).is_file():  # what `dask scheduler --scheduler-file F` wrote
                client = Client(scheduler_file=scheduler, timeout=SCHEDULER_TIMEOUT_S)
            else:
                client = Client(scheduler, timeout=SCHEDULER_TIMEOUT_S)
        except (OSError, TimeoutError) as e:
            reason = first_line(str(e))
            if isinstance(e, TimeoutError) or "timed out" in reason.lower():
                reason = f"nothing answered within {SCHEDULER_TIMEOUT_S} s"
            raise SweepError(
                f"scheduler: cannot reach {scheduler!r}: {reason}; allowed: the address of a "
                "running dask scheduler that this machine can reach"
            ) from None
        with client:
            yield client
        return
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # a free port: the link is printed
            plugins=(IgnoreInterrupts(),),
        )
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def describe(client: Client) -> str:
    """One line for stderr: the scheduler, its workers and the dashboard's link."""
    info = client.scheduler_info()
    n_workers = len(info.get("workers", {}))
    try:
        dashboard = f"dashboard {client.dashboard_link}"
    except (KeyError, TypeError):  # a scheduler that serves no HTTP at all
        dashboard = "no dashboard"
    waiting = "" if n_workers else " (the points wait for workers to join)"
    return f"dask scheduler {info.get('address')}, {n_workers} workers{waiting}; {dashboard}"


# -- on a worker -----------------------------------------------------------------------------
def threads_on_this_host(worker: Any) -> int:
    """The torch threads of a point on a cluster: the CPUs this worker may use (its affinity:
    SLURM's --cpus-per-task, say) shared by the Dask workers on its host that may use them too
    (`dask worker --nworkers 4` shares a node's CPUs; four `srun` tasks each have their own)."""
    mine = set(usable_cpus())
    host = get_address_host(worker.address)
    try:
        client = get_client()
        addresses = client.scheduler_info()["workers"]
        here = [a for a in addresses if get_address_host(a) == host]
        theirs = client.run(usable_cpus, workers=here, on_error="ignore")
        sharing = sum(1 for cpus in theirs.values() if mine & set(cpus))
    except Exception:  # the scheduler busy or gone: assume this worker is alone
        sharing = 1
    return max(1, len(mine) // max(1, sharing))


def visible_gpus() -> list[str]:
    """This machine's GPUs as CUDA_VISIBLE_DEVICES names them, without importing torch: the
    variable's own list where it is set (up to an entry such as -1, which hides the rest, as
    CUDA reads it), else one per GPU the NVIDIA driver lists (/proc/driver/nvidia/gpus)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        gpus = []
        for name in (part.strip() for part in listed.split(",")):
            if not name or name.startswith("-"):
                break
            gpus.append(name)
        return gpus
    try:
        return [str(i) for i in range(len(os.listdir("/proc/driver/nvidia/gpus")))]
    except OSError:
        return []


def gpu_of_worker(gpus: list[str], worker_name: Any) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES for a LocalCluster's worker `worker_name` (0, 1, ...): the GPUs
    dealt round robin, so N workers on N GPUs train one point each on a GPU of its own (more
    workers than GPUs share them); {} without GPUs, or for a worker not named by a number."""
    if not gpus or not str(worker_name).isdigit():
        return {}
    return {"CUDA_VISIBLE_DEVICES": gpus[int(worker_name) % len(gpus)]}


def usable_cpus() -> list[int]:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _cancelled(worker: Any) -> bool:
    """Whether the scheduler released this task while it ran (its client, the sweep, left)."""
    key = getattr(thread_state, "key", None)
    if key is None:
        return False
    task = worker.state.tasks.get(key)
    return task is None or task.state == "cancelled"


def _stop_requested(stop: Event, worker: Any) -> bool:
    try:
        return stop.is_set() or _cancelled(worker)
    except Exception:  # the scheduler unreachable for a moment: ask again next time
        return False


def run_point(job: dict[str, Any], stop_event: str) -> dict[str, Any]:
    """The Dask task: run one point in its own process on this worker; returns its record.

    A record the point's process could not write (it died, or was stopped before it began)
    comes back with `recorded: False`, for the sweep to write.
    """
    worker = get_worker()
    stop = Event(stop_event)
    if stop.is_set():
        return {"name": job["name"], "status": NOT_STARTED, "recorded": True}
    job = {**job, "worker": worker.address}
    threads = job.pop("thread_env", None) or dict.fromkeys(
        THREAD_VARIABLES, str(threads_on_this_host(worker))
    )
    gpu = gpu_of_worker(job.pop("gpus", None) or [], worker.name)  # a LocalCluster's point
    folder = Path(job["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "kernel.log", "ab") as log:  # the point's and its kernel's stderr
        process = subprocess.Popen(
            [sys.executable, "-m", "workbench.batch.sweep_point", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, **threads, **gpu},
            start_new_session=True,  # out of the terminal's reach: the sweep stops it
        )
    with process:
        process.stdin.write(json.dumps(job).encode())
        process.stdin.close()
        stopping = False
        while True:
            try:
                exit_code = process.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if not stopping and _stop_requested(stop, worker):
                process.terminate()  # the point stops its kernel and records 'stopped'
                stopping = True
    record = read_json_quietly(folder / "point.json")
    if record.get("attempt") == job["attempt"] and record.get("status") not in (
        None,
        Status.RUNNING,
    ):
        return {**record, "recorded": True}
    error = (
        STOPPED_ERROR
        if stopping
        else f"the point's process ended with exit code {exit_code} (see its kernel.log)"
    )
    base = record if record.get("attempt") == job["attempt"] else {}
    return {
        **base,
        "name": job["name"],
        "parameters": job["parameters"],
        "attempt": job["attempt"],
        "worker": worker.address,
        "status": Status.STOPPED if stopping else Status.FAILED,
        "error": error,
        "finished_at": now(),
        "recorded": False,
    }
