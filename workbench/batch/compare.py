"""Run folders side by side: one table row per run, and per-module curves for depth figures.

Used by `workbench sweep` (its results.csv), by notebooks/compare.ipynb and by the teaching
notebooks. A run folder is any folder holding a `config.json` (see workbench/records.py).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.records import atomic_write_bytes

# fields that never tell two runs apart for a reader (where the run lives, how fast it went)
NOT_LABELS = ("out", "data_dir", "device", "precision", "channels_last", "compile")


def find_run_folders(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Every run folder at or below the given paths (a sweep folder, run folders), sorted."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such folder")
        if (path / "config.json").is_file():
            found.append(path)
        else:
            found += sorted(p.parent for p in path.rglob("config.json"))
    return list(dict.fromkeys(found))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file as a dict; {} when it is missing."""
    return json.loads(path.read_text()) if path.is_file() else {}


def varying_fields(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The config fields whose values differ between the runs (in Config's order)."""
    if len(configs) < 2:
        return []
    names = list(configs[0])
    return [
        name
        for name in names
        if name not in NOT_LABELS and len({json.dumps(c.get(name)) for c in configs}) > 1
    ]


def label(values: Mapping[str, Any]) -> str:
    """'aux_depth=1, downsampling=maxpool': what tells a run apart from the others."""
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "run"


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


def comparison_table(
    run_dirs: Sequence[str | Path], labels: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One row per run folder: label, the fields that differ, status and per-module accuracies.

    Labels are the differing fields (`aux_depth=1, downsampling=maxpool`) unless given.
    """
    runs = [Path(p) for p in run_dirs]
    if labels is not None and len(labels) != len(runs):
        raise ValueError(f"labels: got {len(labels)} for {len(runs)} run folders")
    configs = [read_json(p / "config.json") for p in runs]
    summaries = [read_json(p / "summary.json") for p in runs]
    differing = varying_fields(configs)
    n_modules = max([c.get("n_modules", 0) for c in configs] + [0])
    probes = any(s.get("per_module_probe_acc") for s in summaries)
    rows = []
    for i, (path, config, summary) in enumerate(zip(runs, configs, summaries)):
        values = {name: config.get(name) for name in differing}
        if labels is not None:
            name = labels[i]
        else:
            name = label(values) if differing else path.name
        rows.append(
            {
                "label": name,
                **values,
                "status": summary.get("status", "not started"),
                **result_columns(summary, n_modules, probes),
                "run_dir": str(path),
            }
        )
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
    """Runs side by side: the table, and the per-module figures built from it."""

    rows: list[dict[str, Any]]
    figures: dict[str, Any] = field(default_factory=dict)  # plotly figures by file stem

    def frame(self) -> Any:
        """The table as a pandas DataFrame (what a notebook displays)."""
        return table_frame(self.rows)

    def show(self) -> None:
        """Display the figures as figure JSON (plotly_mimetype): small, no widget state."""
        for fig in self.figures.values():
            fig.show(renderer="plotly_mimetype")

    def save(self, folder: str | Path, png: bool = True) -> list[Path]:
        """Write comparison.csv and the figures (HTML, PNG where a browser is available)."""
        from workbench.ui.plots import save_figures

        folder = Path(folder)
        write_csv(folder / "comparison.csv", self.rows)
        return [folder / "comparison.csv", *save_figures(self.figures, folder, png=png)]


def comparison_figures(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy against depth, one line per run; with probes, separability against depth too."""
    from workbench.ui.plots import depth_figure, separability_figure

    figures = {"depth": depth_figure(depth_curves(rows))}
    probes = depth_curves(rows, prefix="probe_module_")
    if probes:
        figures["separability"] = separability_figure(depth_curves(rows), probes)
    return figures


def compare(
    paths: str | Path | Iterable[str | Path], labels: Sequence[str] | None = None
) -> Comparison:
    """Collect the run folders at or below `paths` into a table and its figures."""
    if not isinstance(paths, (str, Path)):
        paths = [p for p in paths if str(p)]  # a notebook's "" means "not given"
    runs = find_run_folders(paths)
    if not runs:
        raise FileNotFoundError(f"no run folders (holding config.json) in {paths}")
    rows = comparison_table(runs, labels)
    return Comparison(rows, comparison_figures(rows))
