"""Run folders side by side: one table row per run, and figures with one line per run.

Used by `workbench sweep` (its results.csv), by notebooks/compare.ipynb and by the teaching
notebooks. A run folder is any folder holding a `config.json` (see workbench/records.py);
runs are labelled by workbench.runs.run_labels (the fields that differ between them). A run
whose config.json, summary.json or metrics.jsonl cannot be used (a hand edit, a copy gone wrong)
is a row of its own, status `unreadable` and the reason in `error`; the others are compared and
drawn as if it were not there.

    comparison = compare("runs")          # every run below runs/; or a sweep folder, globs
    comparison.frame()                    # the table
    comparison.show("accuracy", "loss")   # per epoch; "depth": accuracy against depth
"""

from __future__ import annotations

import csv
import glob
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.config import saved_value
from workbench.records import (
    Status,
    atomic_write_bytes,
    read_json_object,
    read_metrics,
)
from workbench.runs import folder_labels, read_folders, read_run_files, varying_fields

DEFAULT_RUNS = "runs"  # where the panel and `workbench run` put runs (records' default `out`)
FIGURES = ("accuracy", "loss", "depth", "separability")  # what Comparison.show can be asked for
UNREADABLE = Status.UNREADABLE.value  # the status of a run whose files cannot be read
HOW_TO_POINT = """\
compare.ipynb compares run folders (folders holding config.json) found at or below:
  sweep_dir  a folder holding runs: runs/ (the default: where the panel and `workbench run`
             put runs, relative to the notebook's folder), or a sweep's folder (its --out)
  run_dirs   run folders or glob patterns, e.g. ["runs/k1", "runs/20261130-*"]
For example:
  papermill notebooks/compare.ipynb out.ipynb -p sweep_dir runs/aux-depth
  papermill notebooks/compare.ipynb out.ipynb -y '{run_dirs: [runs/k1, runs/k3]}'
From Python: compare("runs/aux-depth"), compare(["runs/k1", "runs/k3"])"""


class RunsNotFound(FileNotFoundError):
    """Nothing to compare where compare() looked; the message is one line naming where."""


def find_run_folders(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Every run folder at or below the given paths (folders, run folders, glob patterns), in
    the order given, each folder's runs sorted. A path that does not exist, or a pattern that
    matches nothing, raises RunsNotFound."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for given in map(str, paths):
        matches = sorted(glob.glob(given)) if glob.has_magic(given) else [given]
        if not matches:
            raise RunsNotFound(f"{given}: no folder matches this pattern")
        for path in map(Path, matches):
            if not path.exists():
                raise RunsNotFound(f"{path}: no such folder")
            if (path / "config.json").is_file():
                found.append(path)
            elif path.is_dir():
                found += sorted(p.parent for p in path.rglob("config.json"))
    return list(dict.fromkeys(found))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file as a dict; {} when it is missing, UnreadableFile (one line naming the file
    and the problem) when it cannot be read or holds no JSON object."""
    return read_json_object(path) if path.is_file() else {}


def result_columns(
    summary: Mapping[str, Any], n_modules: int, probes: bool = False
) -> dict[str, Any]:
    """A summary's numbers as flat columns: acc_module_1..K, probes if asked, the headline ones."""
    accs = list(summary.get("per_module_test_acc") or [])
    row: dict[str, Any] = {
        f"acc_module_{k}": accs[k - 1] if k <= len(accs) else None for k in range(1, n_modules + 1)
    }
    if probes:
        probe_accs = list(summary.get("per_module_probe_acc") or [])
        row.update(
            {
                f"probe_module_{k}": probe_accs[k - 1] if k <= len(probe_accs) else None
                for k in range(1, n_modules + 1)
            }
        )
    row["final_test_acc"] = summary.get("final_test_acc")
    row["ensemble_test_acc"] = summary.get("ensemble_test_acc")
    row["wall_time_s"] = summary.get("wall_time_s")
    return row


def read_compared_run(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run's config and summary, its metrics checked too (the figures read them): an
    unreadable file makes the run an unreadable row here rather than a crash in a figure."""
    config, summary = read_run_files(path)
    read_metrics(path)
    return config, summary


def comparison_table(
    run_dirs: Sequence[str | Path], labels: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One row per run folder: label, the fields that differ, status and per-module accuracies.

    Labels are workbench.runs.folder_labels' (`aux_depth=1, downsampling=maxpool`, over the
    readable runs) unless given. An unreadable run keeps its row, status `unreadable` and no
    numbers; then every row has an `error` column, the reason in one line or "".
    """
    runs = [Path(p) for p in run_dirs]
    if labels is not None and len(labels) != len(runs):
        raise ValueError(f"labels: got {len(labels)} for {len(runs)} run folders")
    read, errors = read_folders(runs, read_compared_run)
    configs = {path: config for path, (config, _) in read.items()}
    differing = varying_fields(list(configs.values()))
    n_modules = max([c.get("n_modules", 0) for c in configs.values()] + [0])
    probes = any(s.get("per_module_probe_acc") for _, s in read.values())
    names = list(labels) if labels is not None else folder_labels(runs, configs)
    rows = []
    for name, path in zip(names, runs):
        config, summary = read.get(path, ({}, {}))
        status = UNREADABLE if path in errors else summary.get("status", "not started")
        rows.append(
            {
                "label": name,
                # an unreadable row gets the same columns, empty, so the table keeps its order
                **{field: saved_value(config, field) for field in differing},
                "status": status,
                **result_columns(summary, n_modules, probes),
                "run_dir": str(path),
            }
        )
    if errors:
        for row, path in zip(rows, runs):
            row["error"] = errors.get(path, "")
    return rows


def depth_curves(
    rows: Sequence[Mapping[str, Any]], prefix: str = "acc_module_"
) -> dict[str, list[float]]:
    """{label: per-module values} from table rows, for `depth_figure` (unfinished modules cut)."""
    curves = {}
    for row in rows:
        values = []
        for k in range(1, 1 + sum(1 for key in row if key.startswith(prefix))):
            value = row.get(f"{prefix}{k}")
            if value is None or value == "":
                break
            values.append(float(value))
        if values:
            curves[str(row.get("label") or row.get("run_dir"))] = values
    return curves


def table_frame(rows: Sequence[Mapping[str, Any]]) -> Any:
    """The rows as a pandas DataFrame, for display in a notebook."""
    import pandas as pd

    return pd.DataFrame(list(rows))


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write rows (their keys, in first-seen order, are the columns) as CSV, atomically."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    atomic_write_bytes(Path(path), text.getvalue().encode())


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """A CSV written by `write_csv` (a sweep's results.csv), as rows of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@dataclass
class Comparison:
    """Runs side by side: the table, and the figures built from it. None when no runs were
    found or none could be read: then `problem` says why, show() prints it when there are rows
    (unreadable ones), and save() writes their table; nothing when none were found."""

    rows: list[dict[str, Any]]
    figures: dict[str, Any] = field(default_factory=dict)  # plotly figures by file stem
    save_to: Path = Path("comparison")  # where save() writes when given no folder
    problem: str = ""

    def frame(self) -> Any:
        """The table as a pandas DataFrame (what a notebook displays); None without runs."""
        return table_frame(self.rows) if self.rows else None

    def show(self, *names: str) -> None:
        """Display the named figures (all when none named; `separability` exists only with
        probes) as figure JSON (plotly_mimetype): small, no widget state."""
        unknown = [n for n in names if n not in FIGURES]
        if unknown:
            raise ValueError(f"show: no figure {unknown[0]!r}; choose from {', '.join(FIGURES)}")
        if self.rows and not self.figures:  # rows but no figures: none could be read
            print(f"Nothing to draw: {self.problem}")
        for name, fig in self.figures.items():
            if not names or name in names:
                fig.show(renderer="plotly_mimetype")

    def save(
        self, folder: str | Path | None = None, png: bool = True, report: bool = False
    ) -> list[Path]:
        """Write comparison.csv and the figures (HTML, PNG where a browser is available) into
        `folder` (default `save_to`); with `report`, print what was written."""
        from workbench.ui.plots import save_figures

        if not self.rows:
            written: list[Path] = []
        else:
            folder = Path(folder or self.save_to)
            write_csv(folder / "comparison.csv", self.rows)
            written = [folder / "comparison.csv", *save_figures(self.figures, folder, png=png)]
        if report and written:
            print("written:", *written, sep="\n  ")
        elif report:
            print("nothing to save: no runs were found")
        return written


def comparison_figures(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One line per run, a run's colour the same in each: its last module's test accuracy and
    training loss per epoch (from the run folders' metrics), accuracy against depth (probes
    dashed); with probes, the aux heads against the probes too."""
    from workbench.ui.compare_figures import (
        epoch_accuracy_figure,
        epoch_loss_figure,
        legend_below,
        recolor,
        run_colors,
    )
    from workbench.ui.plots import depth_figure, separability_figure

    rows = [row for row in rows if row.get("status") != UNREADABLE]  # nothing to draw
    labels = [str(row.get("label") or row.get("run_dir")) for row in rows]
    colors = run_colors(labels)
    metrics = {
        name: read_metrics(row["run_dir"]) if row.get("run_dir") else []
        for name, row in zip(labels, rows)
    }
    curves = depth_curves(rows)
    probes = depth_curves(rows, prefix="probe_module_")
    figures = {
        "accuracy": epoch_accuracy_figure(metrics, colors),
        "loss": epoch_loss_figure(metrics, colors),
        "depth": recolor(depth_figure(curves, probes), colors),
    }
    if probes:
        figures["separability"] = legend_below(recolor(separability_figure(curves, probes), colors))
    return figures


def compare(
    paths: str | Path | Iterable[str | Path] = (),
    labels: Sequence[str] | None = None,
    explain: bool = False,
) -> Comparison:
    """Collect the run folders at or below `paths` into a table and its figures.

    `paths`: folders holding runs (runs/, a sweep folder), run folders or glob patterns; ""
    entries are ignored (a notebook's "not given"), and nothing given means runs/. When no run
    is found RunsNotFound is raised (one line); with `explain` that line and what to pass
    (HOW_TO_POINT) are printed instead, and an empty Comparison comes back. Runs that cannot
    be read are rows marked unreadable (see comparison_table), with `explain` also printed with
    their reasons; when no run can be read, their table comes back without figures, its
    `problem` saying so.
    """
    given = [paths] if isinstance(paths, (str, Path)) else list(paths)
    given = [str(p) for p in given if str(p)]
    default = "" if given else f" ({DEFAULT_RUNS}/ is the default when no folder is given)"
    given = given or [DEFAULT_RUNS]
    try:
        runs = find_run_folders(given)
        if not runs:
            where = ", ".join(given)
            raise RunsNotFound(f"no run folders (folders holding config.json) in {where}")
    except RunsNotFound as error:
        if not explain:
            raise
        print(f"Nothing to compare: {error}{default}\n\n{HOW_TO_POINT}")
        return Comparison([], problem=f"{error}{default}")
    rows = comparison_table(runs, labels)
    first = Path(given[0])
    holds_runs = first.is_dir() and not (first / "config.json").is_file()
    save_to = first / "comparison" if holds_runs else Path("comparison")
    unreadable = [row for row in rows if row["status"] == UNREADABLE]
    if explain and unreadable:  # a notebook's table cuts long cells: each reason in full
        print(f"{len(unreadable)} of {len(rows)} run folders cannot be read, left out of figures:")
        print("\n".join(f"  {row['run_dir']}: {row['error']}" for row in unreadable))
    if len(unreadable) == len(rows):
        # the table says why each failed; a user expects that, not an error or empty figures
        problem = f"the {len(rows)} run folder(s) found cannot be read; the error column says why"
        return Comparison(rows, {}, save_to, problem)
    return Comparison(rows, comparison_figures(rows), save_to, "")
