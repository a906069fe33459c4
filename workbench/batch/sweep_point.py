"""One sweep point in a process of its own: papermill runs its notebook; a stop stops the kernel.

    python -m workbench.batch.sweep_point PARENT_PID < job.json

The Dask task that runs a point (sweep_cluster.run_point, on whichever worker the scheduler
picked) starts this process and waits for it. The point gets a process of its own because
- its SIGTERM handler stops the kernel and records the point as stopped, and a signal handler
  can only be set in a main thread, while a Dask task runs in one of its worker's threads;
- its stderr, and so its kernel's, goes to `<point>/kernel.log` without touching the worker's;
- it outlives its worker long enough to do that: a worker whose nanny (or sweep) died exits at
  once (Dask's choice), and Linux's parent-death signal then sends this process its SIGTERM.

It writes `<point>/point.json` as it starts and as it ends: status, error, attempt, worker,
start and end times.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from workbench.records import Status, atomic_write_json, read_json_quietly

KERNEL_START_TRIES = 3  # a kernel that fails to start (a port taken meanwhile, say) is retried
# A stopped kernel's run gets this long to record 'stopped', then SIGKILL. Generous: on a loaded
# machine (several kernels training on two cores) a KeyboardInterrupt waits for the op in hand
# and the summary's fsync'd write; 3 s was seen to be too short there.
KERNEL_GRACE_S = 20.0
STOPPED_ERROR = "the sweep ended while this point ran; run the sweep again to finish it"


def now() -> float:
    """Seconds since the epoch, to the millisecond, as point.json records times."""
    return round(time.time(), 3)


def first_line(text: str) -> str:
    """The first non-blank line of a message: what fits in results.csv's error column."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def execute_point(job: dict[str, Any]) -> dict[str, Any]:
    """Run one point's notebook with papermill; returns (and writes) its point.json record.

    A kernel that dies before any cell ran is started again, up to KERNEL_START_TRIES times;
    an error inside a cell is the point's error, not retried.
    """
    folder, notebook = Path(job["folder"]), Path(job["folder"]) / "experiment.ipynb"
    record: dict[str, Any] = {
        "name": job["name"],
        "parameters": job["parameters"],
        "status": Status.RUNNING,
        "error": None,
        "started_at": now(),
        "finished_at": None,
        "kernel_start_tries": 0,
        "worker": job.get("worker"),
        "pid": os.getpid(),
        "attempt": job["attempt"],
        # the GPU(s) this point and its kernel see (a LocalCluster deals one per worker)
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    _IN_FLIGHT.update(job=job, record=record)  # what a SIGTERM must stop and record
    atomic_write_json(folder / "point.json", record)
    _execute(job, notebook, record)
    record["finished_at"] = now()
    atomic_write_json(folder / "point.json", record)
    _IN_FLIGHT.clear()
    return record


def _cells_started(notebook: Path) -> bool:
    """Whether papermill got as far as running a cell (so the kernel did start)."""
    import nbformat

    try:
        nb = nbformat.read(notebook, as_version=4)
    except (OSError, ValueError):
        return False
    return any(cell.get("metadata", {}).get("papermill", {}).get("start_time") for cell in nb.cells)


def _execute(job: dict[str, Any], notebook: Path, record: dict[str, Any]) -> None:
    """papermill, with kernel-start retries; sets record's status and error."""
    import papermill
    from jupyter_client.kernelspec import NoSuchKernel
    from papermill.exceptions import PapermillExecutionError

    from workbench.batch.notebook import EXPERIMENT_NOTEBOOK

    template = job.get("template") or str(EXPERIMENT_NOTEBOOK)  # None: this install's own
    cwd = job["cwd"] if Path(job["cwd"]).is_dir() else job["folder"]  # not on every machine
    while True:
        record["kernel_start_tries"] += 1
        try:
            papermill.execute_notebook(
                template,
                str(notebook),
                parameters={**job["parameters"], "out_dir": job["run_dir"], "live": False},
                kernel_name=job["kernel"],
                cwd=cwd,
                progress_bar=False,
                log_output=False,
            )
        except PapermillExecutionError as e:  # a cell raised: the point's own error
            record.update(status=Status.FAILED, error=f"{e.ename}: {first_line(e.evalue)}")
            return
        except NoSuchKernel:
            error = f"kernel: no kernelspec named {job['kernel']!r} (see jupyter kernelspec list)"
            record.update(status=Status.FAILED, error=error)
            return
        except Exception as e:  # the kernel died, or never started
            started = _cells_started(notebook)  # papermill stamps each cell as it starts it
            tries = record["kernel_start_tries"]
            if not started and tries < KERNEL_START_TRIES:
                time.sleep(tries)  # let a port, or a busy machine, free up
                continue
            what = (
                "" if started else f"kernel {job['kernel']!r} did not start after {tries} tries: "
            )
            record.update(
                status=Status.FAILED, error=f"{what}{type(e).__name__}: {first_line(str(e))}"
            )
            return
        summary = read_json_quietly(Path(job["run_dir"]) / "summary.json")
        status = summary.get("status", Status.FAILED)
        error = (
            None if status == Status.FINISHED else summary.get("error") or f"the run ended {status}"
        )
        record.update(status=status, error=error)
        return


# -- a stop, however it comes: the task's SIGTERM, or the parent-death signal --------------------
_IN_FLIGHT: dict[str, Any] = {}  # the job this process runs and its point.json record


def _stop_point(signum: int | None = None, frame: Any = None) -> None:
    """SIGTERM: stop the kernel (whose run records 'stopped'), record the point as stopped, and
    exit at once."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    job, record = _IN_FLIGHT.get("job"), _IN_FLIGHT.get("record")
    if job is not None and record is not None:
        _stop_kernels(Path(job["run_dir"]))
        record.update(status=Status.STOPPED, error=STOPPED_ERROR, finished_at=now())
        with contextlib.suppress(OSError):
            atomic_write_json(Path(job["folder"]) / "point.json", record)
    os._exit(143)


def _stop_kernels(run_dir: Path) -> None:
    """Interrupt this process's kernels (each leads its own process group), give the run a
    moment to record 'stopped', then kill the groups."""
    kernels = _children()
    for pid in kernels:
        _signal_group(pid, signal.SIGINT)  # a KeyboardInterrupt in the cell: the run stops
    deadline = time.monotonic() + KERNEL_GRACE_S
    while (
        time.monotonic() < deadline
        and read_json_quietly(run_dir / "summary.json").get("status") == Status.RUNNING
        and any(_alive(pid) for pid in kernels)
    ):
        time.sleep(0.1)
    for pid in kernels:
        _signal_group(pid, signal.SIGKILL)


def _children() -> list[int]:
    """This process's children, from /proc (Linux; elsewhere the kernels' own parent poller
    ends them within a second of this process)."""
    me, found = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == me:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Whether a child is still running (a zombie, one that ended unreaped, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _die_with_parent(parent: int) -> None:
    """SIGTERM to this process when its parent (the Dask worker) ends: Linux's
    PR_SET_PDEATHSIG, else a watcher thread."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        if ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) == 0:
            if os.getppid() != parent:  # the worker died before the line above took effect
                os.kill(os.getpid(), signal.SIGTERM)
            return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """The point's process: the job (JSON) on stdin, the worker's pid as the one argument."""
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the sweep's to handle
    signal.signal(signal.SIGTERM, _stop_point)
    _die_with_parent(int(argv[0]))
    job = json.loads(sys.stdin.read())
    execute_point(job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
