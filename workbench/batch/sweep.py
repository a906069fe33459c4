"""`workbench sweep GRID.yaml --out DIR --workers N`: the experiment notebook over a grid.

The grid file (YAML) holds the fields every point shares and the lists to cross:

    fixed:                 # Config fields, one value each (optional)
      n_train: 1000
      epochs: 2
    grid:                  # Config fields, a list each: every combination is one point
      aux_depth: [1, 3]
      downsampling: [invertible, maxpool]

`grid` may also be a list of such mappings, crossed one by one, their points run in turn:

    grid:
      - {regularization: [none]}
      - {regularization: [kinetic], tau: [0.1, 1.0, 10.0]}

Every point's Config is built and validated before anything runs; a bad grid is one line on
stderr and exit code 2. Each point then runs notebooks/experiment.ipynb through papermill
(live=False) in its own folder, N points at a time:

    DIR/grid.yaml                         a copy of the grid last run
    DIR/results.csv                       one row per point, rewritten (atomically) as points end
    DIR/<point>/experiment.ipynb          the executed notebook
    DIR/<point>/point.json                status, error, attempts, start and end times
    DIR/<point>/run/                      the run folder (config, metrics, summary, figures)

<point> is named by the swept values, e.g. `aux_depth=1,downsampling=maxpool`. A failing point
does not stop the others: it is recorded with its error. Running the sweep again skips the
points that finished (by point.json, or by their run's summary.json when a dying sweep could not
record it) and runs the others again (an interrupted run resumes from its checkpoint).
Exit code 0 when every point finished, 1 when any did not, 2 for a bad grid or a busy folder.

The sweep holds DIR/.lock while it runs (a second sweep on DIR is refused, naming the first),
and its workers die with it: a Ctrl-C or a SIGTERM stops their kernels and records their
points as stopped; a kill -9 reaches them through the parent-death signal (Linux).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from workbench.batch.compare import read_json, result_columns, write_csv
from workbench.batch.notebook import EXPERIMENT_NOTEBOOK, NOTEBOOK_PARAMETERS
from workbench.config import Config, ConfigError, config_fields
from workbench.records import (
    RESUMABLE_DIFFERENCES,
    RunLock,
    atomic_write_bytes,
    atomic_write_json,
    os_reason,
    remove_temporary_files,
)

GRID_KEYS = ("fixed", "grid")
SET_BY_SWEEP = ("out", *(name for name, *_ in NOTEBOOK_PARAMETERS))  # out, live, out_dir
KERNEL_START_TRIES = 3  # a kernel that fails to start (a port taken meanwhile, say) is retried
FINISHED = "finished"
KERNEL_GRACE_S = 3.0  # a stopped kernel's run gets this long to record 'stopped', then SIGKILL


class SweepError(ConfigError):
    """The grid cannot be run as given; the message is one line for the user."""


@dataclass(frozen=True)
class Point:
    """One combination of the grid: its swept values, its validated Config and its folder."""

    name: str
    swept: dict[str, Any]
    parameters: dict[str, Any]  # what the notebook is given: fixed + swept values
    config: Config
    folder: Path

    @property
    def run_dir(self) -> Path:
        return self.folder / "run"

    @property
    def notebook(self) -> Path:
        return self.folder / "experiment.ipynb"

    @property
    def record_path(self) -> Path:
        return self.folder / "point.json"

    def record(self) -> dict[str, Any]:
        """point.json: {} before the point first ran."""
        try:
            return read_json(self.record_path)
        except ValueError:  # a torn file cannot happen (atomic writes), a hand-edited one can
            return {}


# -- the grid ----------------------------------------------------------------------------------
def load_grid(path: str | Path) -> tuple[dict[str, Any], list[dict[str, list[Any]]]]:
    """(fixed values, blocks of lists to cross) from a YAML grid file, checked for shape.

    `grid` is one mapping of lists, or a list of such mappings whose points are run one block
    after the other (to cross tau only with the kinetic regularizer, say).
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SweepError(f"grid: cannot read {str(path)!r} ({e.strerror})") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise SweepError(f"grid: {str(path)!r} is not valid YAML{at}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SweepError(
            f"grid: {str(path)!r} holds a {type(data).__name__}; allowed: a mapping with the "
            "keys fixed and grid"
        )
    unknown = sorted(set(data) - set(GRID_KEYS))
    if unknown:
        raise SweepError(f"grid: unknown key {unknown[0]!r}; allowed: {', '.join(GRID_KEYS)}")
    fixed, grid = data.get("fixed") or {}, data.get("grid")
    blocks = grid if isinstance(grid, list) else [grid]
    if not isinstance(fixed, dict) or not all(isinstance(b, dict) for b in blocks if b):
        raise SweepError(
            "grid: fixed must be a mapping {field: value}, and grid a mapping {field: [values]} "
            "or a list of such mappings"
        )
    _check_names("fixed", fixed)
    if not blocks or not all(blocks):  # nothing to sweep: not one default run in disguise
        raise SweepError(
            f"grid: got {_shown(grid)} in {str(path)!r}, nothing to sweep; allowed: a mapping "
            "{field: [values]} with at least one field, or a list of such mappings (one run: "
            "workbench run)"
        )
    for block in blocks:
        _check_names("grid", block)
        for name, values in block.items():
            if not isinstance(values, list) or not values:
                raise SweepError(
                    f"grid: {name}: got {values!r}; allowed: a non-empty list of values such as "
                    "[1, 3] (single values go under fixed)"
                )
        both = sorted(set(fixed) & set(block))
        if both:
            raise SweepError(f"grid: {both[0]!r} is both fixed and swept; allowed: one of the two")
    return fixed, blocks


def _shown(grid: Any) -> str:
    return "no grid" if grid is None else "an empty grid" if not grid else "an empty block"


def _check_names(section: str, values: Mapping[str, Any]) -> None:
    known = [f.name for f in config_fields()]
    for name in values:
        if name in SET_BY_SWEEP:
            raise SweepError(
                f"{section}: {name!r} is set by the sweep (each point's folder under --out); "
                "allowed: any other Config field"
            )
        if name not in known:
            raise SweepError(f"{section}: unknown field {name!r}; allowed: {', '.join(known)}")


def point_name(swept: Mapping[str, Any]) -> str:
    """A folder name from the swept values: `aux_depth=1,downsampling=maxpool`."""
    parts = [f"{k}={re.sub(r'[^A-Za-z0-9.+-]', '_', str(v))}" for k, v in swept.items()]
    name = ",".join(parts) or "point"
    if len(name) > 120:  # file names stop at 255 bytes; keep them readable, and unique
        name = name[:100] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


def expand_grid(
    fixed: Mapping[str, Any],
    blocks: Sequence[Mapping[str, Sequence[Any]]],
    out_dir: str | Path,
) -> list[Point]:
    """Every point of the grid, its Config validated, in the grid's order (last field fastest).

    Refuses (SweepError, one line) a value Config refuses, a point that appears twice, and a
    point folder that holds a run of another config, before anything runs.
    """
    out = Path(out_dir).resolve()
    points: list[Point] = []
    names: set[str] = set()
    for block in blocks:
        for combination in itertools.product(*block.values()):
            swept = dict(zip(block, combination))
            name = point_name(swept)
            if name in names:
                raise SweepError(
                    f"grid point {name}: appears twice (values that differ only in characters "
                    "a folder name cannot hold count as the same); allowed: each point once"
                )
            names.add(name)
            folder = out / name
            parameters = {**fixed, **swept}
            try:
                config = Config.from_dict({**parameters, "out": str(folder / "run")})
            except ConfigError as e:
                raise SweepError(f"grid point {name}: {e}") from None
            _check_existing_run(name, folder / "run", config)
            points.append(Point(name, swept, parameters, config, folder))
    return points


def _check_existing_run(name: str, run_dir: Path, config: Config) -> None:
    saved = run_dir / "config.json"
    if not saved.is_file():
        return
    try:
        previous = json.loads(saved.read_text())
    except ValueError:
        raise SweepError(
            f"grid point {name}: {saved} is unreadable; allowed: delete that "
            "point's folder to run it again"
        ) from None
    for key, value in config.to_dict().items():
        if key not in RESUMABLE_DIFFERENCES and previous.get(key) != value:
            raise SweepError(
                f"grid point {name}: {run_dir} holds a run with {key}={previous.get(key)!r}, "
                f"not {value!r}; allowed: another --out, or the grid that made that folder"
            )


# -- one point (runs in a worker process) ------------------------------------------------------
def _now() -> float:
    return round(time.time(), 3)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _cells_started(notebook: Path) -> bool:
    """Whether papermill got as far as running a cell (so the kernel did start)."""
    import nbformat

    try:
        nb = nbformat.read(notebook, as_version=4)
    except (OSError, ValueError):
        return False
    return any(cell.get("metadata", {}).get("papermill", {}).get("start_time") for cell in nb.cells)


def execute_point(job: dict[str, Any]) -> dict[str, Any]:
    """Run one point's notebook with papermill; returns (and writes) its point.json record.

    A kernel that dies before any cell ran is started again, up to KERNEL_START_TRIES times;
    an error inside a cell is the point's error, not retried. The kernel's stderr goes to
    `<point>/kernel.log`.
    """
    folder, notebook = Path(job["folder"]), Path(job["folder"]) / "experiment.ipynb"
    record: dict[str, Any] = {
        "name": job["name"],
        "parameters": job["parameters"],
        "status": "running",
        "error": None,
        "started_at": _now(),
        "finished_at": None,
        "kernel_start_tries": 0,
        "pid": os.getpid(),
        "attempt": job["attempt"],
    }
    atomic_write_json(folder / "point.json", record)
    _IN_FLIGHT.update(job=job, record=record)  # what a SIGTERM must stop and record
    # N kernels on C cores: C/N threads each (torch's default, C each, oversubscribes the CPU);
    # the kernel inherits this process's environment. A value the user set is kept.
    os.environ.setdefault("OMP_NUM_THREADS", str(job["threads"]))
    with _stderr_to(folder / "kernel.log"):  # the kernel's warnings and crashes, per point
        _execute(job, notebook, record)
    record["finished_at"] = _now()
    atomic_write_json(folder / "point.json", record)
    _IN_FLIGHT.clear()
    return record


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Send file descriptor 2 (this worker's, and so its kernels') to a file for a while."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _execute(job: dict[str, Any], notebook: Path, record: dict[str, Any]) -> None:
    """papermill, with kernel-start retries; sets record's status and error."""
    import papermill
    from jupyter_client.kernelspec import NoSuchKernel
    from papermill.exceptions import PapermillExecutionError

    while True:
        record["kernel_start_tries"] += 1
        try:
            papermill.execute_notebook(
                job["template"],
                str(notebook),
                parameters={**job["parameters"], "out_dir": job["run_dir"], "live": False},
                kernel_name=job["kernel"],
                cwd=job["cwd"],
                progress_bar=False,
                log_output=False,
            )
        except PapermillExecutionError as e:  # a cell raised: the point's own error
            record.update(status="failed", error=f"{e.ename}: {_first_line(e.evalue)}")
            return
        except NoSuchKernel:
            error = f"kernel: no kernelspec named {job['kernel']!r} (see jupyter kernelspec list)"
            record.update(status="failed", error=error)
            return
        except KeyboardInterrupt:
            record.update(status="stopped", error="interrupted")
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
            record.update(status="failed", error=f"{what}{type(e).__name__}: {_first_line(str(e))}")
            return
        summary = read_json(Path(job["run_dir"]) / "summary.json")
        status = summary.get("status", "failed")
        error = None if status == FINISHED else summary.get("error") or f"the run ended {status}"
        record.update(status=status, error=error)
        return


# -- workers die with the sweep ----------------------------------------------------------------
_IN_FLIGHT: dict[str, Any] = {}  # in a worker: the job it runs and its point.json record


def _worker_init(sweep_pid: int) -> None:
    """First thing in each worker: leave Ctrl-C to the sweep (which stops its workers), and
    end with the sweep however it ends, a kill -9 included."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_worker)
    _die_with_parent()
    if os.getppid() != sweep_pid:  # the sweep died before the line above took effect
        _stop_worker()


def _die_with_parent() -> None:
    """SIGTERM to this process when its parent ends: Linux's PR_SET_PDEATHSIG, else a watcher."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        if ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) == 0:
            return
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def _stop_worker(signum: int | None = None, frame: Any = None) -> None:
    """A worker's SIGTERM: stop its kernel (whose run records 'stopped'), record its point as
    stopped, and exit at once (a queued point must not start)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    job, record = _IN_FLIGHT.get("job"), _IN_FLIGHT.get("record")
    if job is not None and record is not None:
        _stop_kernels(Path(job["run_dir"]))
        record.update(
            status="stopped",
            error="the sweep ended while this point ran; run the sweep again to finish it",
            finished_at=_now(),
        )
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
        and read_json_quietly(run_dir / "summary.json").get("status") == "running"
    ):
        time.sleep(0.1)
    for pid in kernels:
        _signal_group(pid, signal.SIGKILL)


def _children() -> list[int]:
    """This process's children, from /proc (Linux; elsewhere the kernels' own parent poller
    ends them within a second of the worker)."""
    me, found = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == me:
            found.append(int(stat.parent.name))
    return found


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """SIGTERM every worker (each stops its kernel and records its point), then wait for them,
    killing any that outlive the grace period."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for p in processes:
        p.terminate()
    deadline = time.monotonic() + KERNEL_GRACE_S + 5
    for p in processes:
        p.join(max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # a terminated sweep stops as a Ctrl-C'd one does


def read_json_quietly(path: Path) -> dict[str, Any]:
    """A JSON file as a dict; {} when missing or unreadable (being replaced, hand-edited)."""
    try:
        value = read_json(path)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# -- the sweep ---------------------------------------------------------------------------------
def recover_finished(points: Sequence[Point]) -> None:
    """Record as finished the points whose run finished while their sweep died before it
    could say so (point.json still 'running' or 'stopped')."""
    for point in points:
        record = point.record()
        if record.get("status") == FINISHED:
            continue
        summary = read_json_quietly(point.run_dir / "summary.json")
        if summary.get("status") == FINISHED:
            record.update(status=FINISHED, error=None, recovered="from the run's summary.json")
            atomic_write_json(point.record_path, record)


def results_rows(
    points: Sequence[Point], attempts: Mapping[str, int] | None = None
) -> list[dict[str, Any]]:
    """results.csv: one row per point, from its point.json and its run's summary.json.

    `attempts`: the points this sweep runs, by attempt number; a point whose record is from an
    earlier attempt (a dead sweep's 'running', say) is pending until its new attempt starts.
    """
    n_modules = max(p.config.n_modules for p in points)
    summaries = [read_json(p.run_dir / "summary.json") for p in points]
    probes = any(s.get("per_module_probe_acc") for s in summaries)
    swept_names = list(dict.fromkeys(name for p in points for name in p.swept))
    rows = []
    for point, summary in zip(points, summaries):
        record = point.record()
        if attempts and record.get("attempt", 0) < attempts.get(point.name, 0):
            record = {}  # queued again: the record describes an earlier attempt
        rows.append(
            {
                "point": point.name,
                **{name: point.swept.get(name) for name in swept_names},
                "status": record.get("status", "pending"),
                **result_columns(summary, n_modules, probes),
                "notebook_s": (
                    record["finished_at"] - record["started_at"]
                    if record.get("finished_at")
                    else None
                ),
                "run_dir": str(point.run_dir),
                "notebook": str(point.notebook),
                "error": record.get("error") or "",
            }
        )
    return rows


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
    workers: int = 1,
    kernel: str = "python3",
    template: str | Path = EXPERIMENT_NOTEBOOK,
    progress: bool = True,
) -> SweepOutcome:
    """Validate the whole grid, then run its unfinished points `workers` at a time."""
    if workers < 1:
        raise SweepError(f"workers: got {workers}; allowed: a positive number of notebooks")
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
        return _run_points(points, grid_path, out, workers, kernel, template, progress)


def _run_points(
    points: list[Point],
    grid_path: Path,
    out: Path,
    workers: int,
    kernel: str,
    template: str | Path,
    progress: bool,
) -> SweepOutcome:
    """run_sweep's body, inside the sweep folder's lock."""
    atomic_write_bytes(out / "grid.yaml", grid_path.read_bytes())
    results = out / "results.csv"
    recover_finished(points)
    skipped = [p.name for p in points if p.record().get("status") == FINISHED]
    todo = [p for p in points if p.name not in skipped]
    attempts = {p.name: p.record().get("attempt", 0) + 1 for p in todo}
    write_csv(results, results_rows(points, attempts))
    outcome = SweepOutcome(results, [], [], skipped)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(points),
        initial=len(skipped),
        unit="point",
        disable=not progress,
        file=sys.stderr,
        desc="sweep",
    )
    jobs = {}
    for point in todo:
        point.folder.mkdir(parents=True, exist_ok=True)
        jobs[point.name] = {
            "name": point.name,
            "folder": str(point.folder),
            "run_dir": str(point.run_dir),
            "parameters": point.parameters,
            "template": str(template),
            "kernel": kernel,
            "cwd": os.getcwd(),
            "attempt": attempts[point.name],
            "threads": max(1, (os.cpu_count() or 1) // workers),
        }
    by_name = {p.name: p for p in points}
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        # spawn: fresh interpreters, no inherited threads or torch state; each starts its
        # kernels, and _worker_init ties its life to this process
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=get_context("spawn"),
            initializer=_worker_init,
            initargs=(os.getpid(),),
        ) as pool:
            futures: dict[Future, str] = {
                pool.submit(execute_point, jobs[p.name]): p.name for p in todo
            }
            try:
                for future in as_completed(futures):
                    point = by_name[futures[future]]
                    try:
                        record = future.result()
                    except Exception as e:  # the worker process itself died
                        error = f"worker: {type(e).__name__}: {_first_line(str(e))}"
                        record = {"name": point.name, "status": "failed", "error": error}
                        record["attempt"] = attempts[point.name]
                        atomic_write_json(point.record_path, record)
                    (outcome.finished if record["status"] == FINISHED else outcome.failed).append(
                        point.name
                    )
                    if record["status"] != FINISHED:
                        message = f"sweep: point {point.name} {record['status']}: {record['error']}"
                        bar.write(message, file=sys.stderr)
                    write_csv(results, results_rows(points, attempts))
                    bar.set_postfix(failed=len(outcome.failed))
                    bar.update(1)
            except KeyboardInterrupt:
                _stop_workers(pool)  # each stops its kernel and records its point
                write_csv(results, results_rows(points, attempts))
                raise
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)
    bar.close()
    write_csv(results, results_rows(points, attempts))
    return outcome


# -- the command -------------------------------------------------------------------------------
def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sweep command's flags."""
    parser.add_argument(
        "grid",
        help="YAML grid file: `fixed: {field: value}` and "
        "`grid: {field: [values]}` (see README, Notebooks, papermill and sweeps)",
    )
    parser.add_argument(
        "--out", required=True, help="sweep folder: one sub-folder per point, and results.csv"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="notebooks run at a time (default 1; each runs its own kernel)",
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
            args.grid, args.out, workers=args.workers, kernel=args.kernel, progress=not args.quiet
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
