"""A sweep's grid: the YAML file read and checked, every point expanded and validated, and the
points' records (point.json, their runs' summaries) read back as results.csv's rows.

    fixed:                 # Config fields, one value each (optional)
      n_train: 1000
    grid:                  # Config fields, a list each: every combination is one point
      aux_depth: [1, 3]
      downsampling: [invertible, maxpool]

`grid` may also be a list of such mappings, crossed one by one. Everything here runs before any
point does, so a bad grid is one line (SweepError) and nothing is created.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.batch.compare import read_json, result_columns
from workbench.batch.notebook import NOTEBOOK_PARAMETERS
from workbench.config import Config, ConfigError, config_fields, saved_value
from workbench.records import RESUMABLE_DIFFERENCES, Status, atomic_write_json, read_json_quietly

GRID_KEYS = ("fixed", "grid")
SET_BY_SWEEP = ("out", *(name for name, *_ in NOTEBOOK_PARAMETERS))  # out, live, out_dir
MAX_NAME = 120  # file names stop at 255 bytes; longer point names are cut and hashed
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")  # what a value may not bring into a folder name


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


# -- point folders -----------------------------------------------------------------------------
def point_name(swept: Mapping[str, Any]) -> str:
    """A folder name from the swept values, safe in a shell: `aux_depth-1_downsampling-maxpool`.

    Only [A-Za-z0-9._-]: a run of other characters in a value becomes one `.` (`schedule`
    "1,3,5" gives `schedule-1.3.5`). expand_grid adds a hash where two points would collide.
    """
    parts = [f"{k}-{_UNSAFE.sub('.', str(v))}" for k, v in swept.items()]
    return _bounded("_".join(parts) or "point")


def legacy_point_name(swept: Mapping[str, Any]) -> str:
    """The name sweeps gave a point before the names became shell-safe (`aux_depth=1,...`):
    a sweep folder made then is still resumed in place."""
    parts = [f"{k}={re.sub(r'[^A-Za-z0-9.+-]', '_', str(v))}" for k, v in swept.items()]
    return _bounded(",".join(parts) or "point")


def _bounded(name: str) -> str:
    if len(name) > MAX_NAME:  # keep it readable, and unique
        name = name[:100] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


def _identity(swept: Mapping[str, Any]) -> str:
    return json.dumps(dict(swept), sort_keys=True, default=str)


def expand_grid(
    fixed: Mapping[str, Any],
    blocks: Sequence[Mapping[str, Sequence[Any]]],
    out_dir: str | Path,
) -> list[Point]:
    """Every point of the grid, its Config validated, in the grid's order (last field fastest).

    Refuses (SweepError, one line) a value Config refuses, a point that appears twice, and a
    point folder that holds a run of another config, before anything runs. Two different
    points whose names would be the same (values that differ only in characters a folder name
    cannot hold) keep them apart with a short hash of their values on the later one; a point
    whose folder has the pre-shell-safe name (an older sweep's) keeps that folder.
    """
    out = Path(out_dir).resolve()
    points: list[Point] = []
    taken: dict[str, str] = {}  # folder name -> the swept values that have it
    for block in blocks:
        for combination in itertools.product(*block.values()):
            swept = dict(zip(block, combination))
            identity = _identity(swept)
            if identity in taken.values():
                raise SweepError(
                    f"grid point {point_name(swept)}: appears twice; allowed: each point once"
                )
            name = point_name(swept)
            legacy = legacy_point_name(swept)
            if not (out / name).exists() and (out / legacy).is_dir():
                name = legacy
            elif name in taken:
                name = f"{name}-{hashlib.sha1(identity.encode()).hexdigest()[:6]}"
            taken[name] = identity
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
        held = saved_value(previous, key)
        if key not in RESUMABLE_DIFFERENCES and held != value:
            raise SweepError(
                f"grid point {name}: {run_dir} holds a run with {key}={held!r}, "
                f"not {value!r}; allowed: another --out, or the grid that made that folder"
            )


# -- the points' records ------------------------------------------------------------------------
def recover_finished(points: Sequence[Point]) -> None:
    """Record as finished the points whose run finished while their sweep died before it
    could say so (point.json still 'running' or 'stopped')."""
    for point in points:
        record = point.record()
        if record.get("status") == Status.FINISHED:
            continue
        summary = read_json_quietly(point.run_dir / "summary.json")
        if summary.get("status") == Status.FINISHED:
            record.update(
                status=Status.FINISHED, error=None, recovered="from the run's summary.json"
            )
            atomic_write_json(point.record_path, record)


def results_rows(
    points: Sequence[Point], attempts: Mapping[str, int] | None = None
) -> list[dict[str, Any]]:
    """results.csv: one row per point, from its point.json and its run's summary.json.

    `attempts`: the points this sweep runs, by attempt number; a point whose record is from an
    earlier attempt (a dead sweep's 'running', say) is pending until its new attempt starts.
    """
    n_modules = max(p.config.n_modules for p in points)
    summaries = [read_json_quietly(p.run_dir / "summary.json") for p in points]
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
                    if record.get("finished_at") and record.get("started_at")
                    else None
                ),
                "worker": record.get("worker") or "",  # the Dask worker's address
                "run_dir": str(point.run_dir),
                "notebook": str(point.notebook),
                "error": record.get("error") or "",
            }
        )
    return rows
