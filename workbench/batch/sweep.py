"""`workbench sweep GRID.yaml --out DIR [--workers N | --scheduler ADDRESS]`: the experiment
notebook over a grid, its points run on a Dask cluster.

The grid file (YAML) holds the fields every point shares and the lists to cross (see
sweep_grid.py). Every point's Config is built and validated before anything runs; a bad grid is
one line on stderr and exit code 2. The points are then submitted to a dask.distributed
cluster: a LocalCluster of N single-threaded worker processes on this machine (--workers N,
default 1), or the cluster of a running scheduler (--scheduler tcp://HOST:PORT). Each runs
notebooks/experiment.ipynb through papermill (live=False) in its own folder:

    DIR/grid.yaml                         a copy of the grid last run
    DIR/results.csv                       one row per point, rewritten (atomically) as points end
    DIR/plotly-<version>.min.js           the one plotly.js every point's figures load
    DIR/<point>/experiment.ipynb          the executed notebook
    DIR/<point>/point.json                status, error, attempt, worker, start and end times
    DIR/<point>/kernel.log                the kernel's stderr
    DIR/<point>/run/                      the run folder (config, metrics, summary, figures)

<point> is named by the swept values, e.g. `aux_depth-1_downsampling-maxpool`. A failing point
does not stop the others: it is recorded with its error. Running the sweep again skips the
points that finished (by point.json, or by their run's summary.json when a dying sweep could not
record it) and runs the others again (an interrupted run resumes from its checkpoint).
Exit code 0 when every point finished, 1 when any did not, 2 for a bad grid, a busy folder or a
scheduler that cannot be reached, 130 when interrupted.

The sweep holds DIR/.lock while it runs (a second sweep on DIR is refused, naming the first).
A Ctrl-C or a SIGTERM stops the running points' kernels (their runs and points record
'stopped') and cancels the queued points; after a kill -9 the local workers die at once and each
point's process, told by Linux's parent-death signal, does the same (on a cluster, the scheduler
cancels a vanished client's tasks, and each running one stops its point).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.batch.compare import write_csv
from workbench.batch.notebook import EXPERIMENT_NOTEBOOK
from workbench.batch.sweep_grid import (
    Point,
    SweepError,
    expand_grid,
    legacy_point_name,
    load_grid,
    point_name,
    recover_finished,
    results_rows,
)
from workbench.batch.sweep_point import (
    KERNEL_GRACE_S,
    STOPPED_ERROR,
    execute_point,
    first_line,
    now,
)
from workbench.config import ConfigError
from workbench.records import (
    RunLock,
    Status,
    atomic_write_bytes,
    atomic_write_json,
    os_reason,
    read_json_quietly,
    remove_temporary_files,
)
from workbench.ui.plotly_js import write_shared_plotly_js

__all__ = [  # what other modules import from here
    "Point",
    "SweepError",
    "SweepOutcome",
    "add_sweep_arguments",
    "execute_point",
    "expand_grid",
    "legacy_point_name",
    "load_grid",
    "point_name",
    "read_json_quietly",
    "recover_finished",
    "results_rows",
    "run_sweep",
    "sweep_main",
]
STOP_WAIT_S = KERNEL_GRACE_S + 10  # how long a stopping sweep waits for its points to record it


@dataclass
class SweepOutcome:
    """What a sweep did: the points by status, and where the table is."""

    results: Path
    finished: list[str]
    failed: list[str]
    skipped: list[str]  # finished in an earlier run of the sweep, not run again

    @property
    def exit_code(self) -> int:
        return 0 if not self.failed else 1


def run_sweep(
    grid_path: str | Path,
    out_dir: str | Path,
    workers: int | None = None,
    kernel: str = "python3",
    template: str | Path = EXPERIMENT_NOTEBOOK,
    progress: bool = True,
    scheduler: str | None = None,
) -> SweepOutcome:
    """Validate the whole grid, then run its unfinished points on a Dask cluster: a
    LocalCluster of `workers` processes (default 1), or the one at `scheduler`."""
    if workers is not None and scheduler is not None:
        raise SweepError(
            f"workers: got {workers} with --scheduler; allowed: one of the two (a cluster's "
            "points run on its own workers)"
        )
    workers = 1 if workers is None else workers
    if workers < 1:
        raise SweepError(f"workers: got {workers}; allowed: a positive number of notebooks")
    if scheduler is not None:
        from workbench.batch.sweep_cluster import check_scheduler

        check_scheduler(scheduler)
    if not Path(template).is_file():
        raise SweepError(
            f"notebook: {template} not found; allowed: a checkout of the workbench installed "
            "with pip install -e . (the sweep runs its notebooks/experiment.ipynb)"
        )
    grid_path = Path(grid_path)
    fixed, blocks = load_grid(grid_path)
    points = expand_grid(fixed, blocks, out_dir)  # everything refused here, before any run
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise SweepError(f"out: {str(out_dir)!r} is a file; allowed: a folder")
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out, what="sweep"):  # one sweep per folder: the second is refused, in one line
        remove_temporary_files(out)  # what a killed sweep's writes left
        atomic_write_bytes(out / "grid.yaml", grid_path.read_bytes())
        write_shared_plotly_js(out)  # the points' figures all load this one copy
        # the default notebook is found by each worker in its own install (paths may differ)
        custom = None if Path(template) == EXPERIMENT_NOTEBOOK else str(Path(template).resolve())
        return _run_points(points, out, workers, scheduler, kernel, custom, progress)


def _thread_env(workers: int) -> dict[str, str]:
    """N kernels on C cores here: C/N threads each (torch's default, C each, oversubscribes the
    CPU; Dask's own default for its workers is 1). A value the user set is kept."""
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    user = os.environ.get("OMP_NUM_THREADS")
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    return {name: os.environ.get(name) or user or threads for name in names}


def _run_points(
    points: list[Point],
    out: Path,
    workers: int,
    scheduler: str | None,
    kernel: str,
    template: str | None,
    progress: bool,
) -> SweepOutcome:
    """run_sweep's body, inside the sweep folder's lock."""
    results = out / "results.csv"
    recover_finished(points)
    skipped = [p.name for p in points if p.record().get("status") == Status.FINISHED]
    todo = [p for p in points if p.name not in skipped]
    attempts = {p.name: p.record().get("attempt", 0) + 1 for p in todo}
    write_csv(results, results_rows(points, attempts))
    outcome = SweepOutcome(results, [], [], skipped)
    if not todo:  # nothing to run: no cluster to start
        return outcome
    from workbench.batch.sweep_cluster import visible_gpus  # with Dask, not on import

    jobs = {
        p.name: {
            "name": p.name,
            "folder": str(p.folder),
            "run_dir": str(p.run_dir),
            "parameters": p.parameters,
            "template": template,
            "kernel": kernel,
            "cwd": os.getcwd(),
            "attempt": attempts[p.name],
            # here: split this machine's cores; on a cluster each worker splits its host's
            "thread_env": _thread_env(workers) if scheduler is None else None,
            # here: a GPU per worker, round robin; a cluster's workers are given theirs by it
            "gpus": visible_gpus() if scheduler is None else None,
        }
        for p in todo
    }
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        _submit_and_collect(todo, points, jobs, attempts, outcome, workers, scheduler, progress)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)
    write_csv(results, results_rows(points, attempts))
    return outcome


def _submit_and_collect(
    todo: list[Point],
    points: list[Point],
    jobs: dict[str, dict[str, Any]],
    attempts: dict[str, int],
    outcome: SweepOutcome,
    workers: int,
    scheduler: str | None,
    progress: bool,
) -> None:
    """Every point to the cluster, their records in as they end, results.csv rewritten each
    time; on a Ctrl-C or SIGTERM, the points stopped (each records it) and the queue cancelled."""
    from distributed import Event, as_completed, wait
    from tqdm.auto import tqdm

    from workbench.batch.sweep_cluster import connect, describe, run_point

    by_name = {p.name: p for p in points}
    with connect(scheduler, workers) as client:
        print(f"sweep: {describe(client)}", file=sys.stderr, flush=True)
        stop = Event(f"workbench-sweep-stop-{uuid.uuid4().hex}", client=client)
        bar = tqdm(
            total=len(points),
            initial=len(outcome.skipped),
            unit="point",
            disable=not progress,
            file=sys.stderr,
            desc="sweep",
        )
        futures: dict[Any, str] = {}
        try:
            for p in todo:  # in the grid's order: Dask runs earlier submissions first
                key = f"point-{p.name}-{uuid.uuid4().hex[:8]}"
                futures[client.submit(run_point, jobs[p.name], stop.name, key=key)] = p.name
            for future in as_completed(futures):
                point = by_name[futures[future]]
                try:
                    record = future.result()
                except Exception as e:  # the task itself failed: its worker died, say
                    error = f"worker: {type(e).__name__}: {first_line(str(e))}"
                    record = {**_current(point, attempts), "status": Status.FAILED, "error": error}
                    record.update(finished_at=now(), recorded=False)
                if not record.pop("recorded", True):
                    atomic_write_json(point.record_path, record)
                (
                    outcome.finished if record["status"] == Status.FINISHED else outcome.failed
                ).append(point.name)
                if record["status"] != Status.FINISHED:
                    message = f"sweep: point {point.name} {record['status']}: {record['error']}"
                    bar.write(message, file=sys.stderr)
                write_csv(outcome.results, results_rows(points, attempts))
                bar.set_postfix(failed=len(outcome.failed))
                bar.update(1)
        except KeyboardInterrupt:
            stop.set()  # the running points stop their kernels and record 'stopped'
            running = {key for keys in client.processing().values() for key in keys}
            client.cancel([f for f in futures if f.key not in running])  # never to start
            with contextlib.suppress(Exception):  # a timeout: the records are checked next
                wait([f for f in futures if f.key in running], timeout=STOP_WAIT_S)
            _wait_for_stopped(todo, attempts)
            write_csv(outcome.results, results_rows(points, attempts))
            raise
        finally:
            bar.close()


def _current(point: Point, attempts: Mapping[str, int]) -> dict[str, Any]:
    """The point's record if it belongs to this attempt, else a fresh one."""
    record = point.record()
    if record.get("attempt") != attempts[point.name]:
        record = {"name": point.name, "parameters": point.parameters}
    return {**record, "attempt": attempts[point.name]}


def _wait_for_stopped(todo: Sequence[Point], attempts: Mapping[str, int]) -> None:
    """Wait (bounded) until no point of this sweep says 'running' (on shared storage a record
    may show up late), then record as stopped any that still does (its worker was lost)."""
    deadline = time.monotonic() + 5

    def running() -> list[Point]:
        return [
            p
            for p in todo
            if p.record().get("attempt") == attempts[p.name]
            and p.record().get("status") == Status.RUNNING
        ]

    while running() and time.monotonic() < deadline:
        time.sleep(0.2)
    for point in running():
        record = {**_current(point, attempts), "status": Status.STOPPED, "error": STOPPED_ERROR}
        atomic_write_json(point.record_path, {**record, "finished_at": now()})


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # a terminated sweep stops as a Ctrl-C'd one does


# -- the command -------------------------------------------------------------------------------
def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sweep command's flags."""
    parser.add_argument(
        "grid",
        help="YAML grid file: `fixed: {field: value}` and "
        "`grid: {field: [values]}` (see README, Notebooks, papermill and sweeps)",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="sweep folder: one sub-folder per point, and results.csv (with --scheduler: on "
        "storage every worker sees, under the same path)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="points run at a time on this machine: a local Dask cluster of this many "
        "worker processes (default 1; each runs its own kernel)",
    )
    parser.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run the points on an existing Dask cluster: its scheduler's address "
        "(tcp://HOST:8786, as `dask scheduler` prints it) or its --scheduler-file",
    )
    parser.add_argument(
        "--kernel",
        default="python3",
        help="Jupyter kernel to run the points "
        "in (default python3: this Python when ipykernel is installed in it)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def sweep_main(args: argparse.Namespace) -> int:
    """Run the sweep; returns the exit code (0 all finished, 1 some failed, 2 bad grid)."""
    try:
        outcome = run_sweep(
            args.grid,
            args.out,
            workers=args.workers,
            kernel=args.kernel,
            progress=not args.quiet,
            scheduler=args.scheduler,
        )
    except ConfigError as e:
        print(f"workbench sweep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("workbench sweep: interrupted; finished points are kept", file=sys.stderr)
        return 130
    except OSError as e:  # the sweep folder itself: full, read-only
        message = f"out: cannot write in {args.out!r} ({os_reason(e)})"
        print(f"workbench sweep: error: {message}", file=sys.stderr)
        return 1
    print(
        f"{len(outcome.finished)} finished, {len(outcome.failed)} failed, "
        f"{len(outcome.skipped)} skipped (finished before); results: {outcome.results}"
    )
    return outcome.exit_code
