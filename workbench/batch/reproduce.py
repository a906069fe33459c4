"""`workbench reproduce DIR... --out FILE.csv`: paper presets' runs beside the papers' numbers.

Each run folder (config.json + summary.json, found at or below the given folders, sweep points'
DIR/<point>/run/ included) is matched to the paper preset its config is closest to, field by
field over the fields that change the experiment (presets.NON_EXPERIMENT_FIELDS left out). Runs
of one preset with the same changes (seeds) make one row:

    preset, paper_number, this_run, spread, difference, runs, device, wall_time_s, changed,
    status, metric, seeds, eval_protocol, data_copy, note, run_dirs

`this_run` is the mean of the preset's metric in percent, `spread` its sample standard
deviation, `difference` this_run - paper_number (percent points). A run that differs from its
preset in any field, or that ran on a modified data copy, says so in `changed` (`epochs=1
data=modified copy`): its number is not the paper's experiment, and the table never hides that.
Runs that did not finish are not averaged; they get rows of their own with their status.
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from workbench.config import Config, config_fields
from workbench.presets import NON_EXPERIMENT_FIELDS, PRESETS, paper_presets
from workbench.records import Status, UnreadableFile, atomic_write_bytes
from workbench.runs import read_run_files

COLUMNS = (
    "preset",
    "paper_number",
    "this_run",
    "spread",
    "difference",
    "runs",
    "device",
    "wall_time_s",
    "changed",
    "status",
    "metric",
    "seeds",
    "eval_protocol",
    "data_copy",
    "note",
    "run_dirs",
)
MARKDOWN_COLUMNS = COLUMNS[:10]  # the rest (paths, seeds...) would make the table unreadable
MODIFIED_COPY = "modified copy"
# the fields that decide whether a paper's number is comparable at all
IDENTITY_FIELDS = ("dataset", "arch")


class UnusableRun(ValueError):
    """A folder that looks like a run but cannot be read; the message is the reason."""


@dataclass(frozen=True)
class Match:
    """The paper preset a config is closest to (None: none is), and how the config differs."""

    preset: str | None
    differences: dict[str, Any] = field(default_factory=dict)  # field -> the run's value
    tied_with: tuple[str, ...] = ()  # other presets exactly as close (the match is ambiguous)


@dataclass(frozen=True)
class Run:
    """One run folder, read."""

    path: Path
    config: Config
    summary: dict[str, Any]


# -- finding and reading runs -------------------------------------------------------------------
def find_runs(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Every folder at or below `paths` holding a config.json or a summary.json, sorted.

    A folder with only one of the two is returned too, so that `read_run` can say why it is
    skipped instead of it silently vanishing. Raises FileNotFoundError for a missing path.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such folder")
        marked = {p.parent for name in ("config.json", "summary.json") for p in path.rglob(name)}
        found += sorted(marked)
    return list(dict.fromkeys(found))  # a folder given twice (or nested in another) counts once


def read_run(path: str | Path) -> Run:
    """The run's config and summary; UnusableRun (with the reason) when either is unusable."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UnusableRun("no config.json")
    if not (path / "summary.json").is_file():
        raise UnusableRun("no summary.json (the run has not started)")
    try:  # read as every reader of run folders reads them, with the same reasons
        saved, summary = read_run_files(path)
    except UnreadableFile as e:
        raise UnusableRun(str(e)) from None
    try:
        config = Config.from_dict(saved)
    except ValueError as e:  # a ConfigError: a field or value this workbench does not take
        raise UnusableRun(f"config.json: {_one_line(e)}") from None
    return Run(path, config, summary)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# -- matching a config to a paper preset --------------------------------------------------------
@lru_cache(maxsize=1)
def _experiment_fields() -> tuple[str, ...]:
    return tuple(f.name for f in config_fields() if f.name not in NON_EXPERIMENT_FIELDS)


@lru_cache(maxsize=1)
def _paper_configs() -> dict[str, Config]:
    return {name: p.config() for name, p in paper_presets().items()}


def differences(config: Config, reference: Config) -> dict[str, Any]:
    """{field: config's value} for every experiment field where `config` differs (Config order)."""
    return {
        name: getattr(config, name)
        for name in _experiment_fields()
        if getattr(config, name) != getattr(reference, name)
    }


def match_preset(config: Config) -> Match:
    """The paper preset `config` is closest to: the fewest differing experiment fields.

    Ties go to a preset with the same dataset and arch; a tie that remains is recorded in
    `tied_with` (the first in PRESETS' order is taken). A config whose dataset or arch differs
    from every paper preset's is no paper preset's run: Match(None).
    """
    candidates = _paper_configs()
    if not any(_same_identity(config, c) for c in candidates.values()):
        return Match(None)
    # sort key: fewest differences, then same dataset and arch first; dicts keep PRESETS' order
    scored = {
        name: (len(differences(config, c)), not _same_identity(config, c))
        for name, c in candidates.items()
    }
    best = min(scored.values())
    winners = [name for name, score in scored.items() if score == best]
    return Match(winners[0], differences(config, candidates[winners[0]]), tuple(winners[1:]))


def _same_identity(config: Config, reference: Config) -> bool:
    return all(getattr(config, k) == getattr(reference, k) for k in IDENTITY_FIELDS)


# -- the table ----------------------------------------------------------------------------------
def _value_text(value: Any) -> str:
    """A config value as the CLI takes it: true/false, 0.1, 3,4."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _data_copy(summary: Mapping[str, Any]) -> str:
    """'modified copy', 'original', 'embedded' (the recorded text without its explanation)."""
    data = summary.get("data")
    copy = str(data.get("copy") or "") if isinstance(data, dict) else ""
    if copy.startswith("modified"):
        return MODIFIED_COPY
    return copy.split(" (")[0]


def _metric_percent(summary: Mapping[str, Any], metric: str) -> float | None:
    value = summary.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) * 100.0  # summaries store fractions; papers quote percent


def _distinct(values: Iterable[Any]) -> str:
    return "; ".join(dict.fromkeys(str(v) for v in values if v not in (None, "")))


def _group_status(run: Run, metric: str) -> str:
    status = str(run.summary.get("status") or "unknown")
    if status == Status.FINISHED and _metric_percent(run.summary, metric) is None:
        # a finished run without the number cannot be averaged; keep it visible on its own
        return f"finished, no {metric}"
    return status


def reproduction_table(
    run_dirs: Sequence[str | Path], notes: list[str] | None = None
) -> list[dict[str, Any]]:
    """One row per (paper preset, changes, status) over the given run folders (see COLUMNS).

    Numbers are percent: this_run and spread rounded to 2 decimals, difference = this_run -
    paper_number (rounded, so the row's numbers agree). Only finished runs are averaged.
    Folders that cannot be read, runs of no paper preset and ambiguous matches are described
    in `notes` (when a list is given) rather than raised.
    """
    notes = notes if notes is not None else []
    groups: dict[tuple[str, str, str], list[Run]] = {}
    group_notes: dict[tuple[str, str, str], str] = {}
    for path in run_dirs:
        try:
            run = read_run(path)
        except UnusableRun as e:
            notes.append(f"skipped {path}: {e}")
            continue
        match = match_preset(run.config)
        if match.preset is None:
            notes.append(
                f"{path}: not a paper preset run (dataset={run.config.dataset}, "
                f"arch={run.config.arch})"
            )
            continue
        changes = [f"{k}={_value_text(v)}" for k, v in match.differences.items()]
        if _data_copy(run.summary) == MODIFIED_COPY:
            changes.append(f"data={MODIFIED_COPY}")
        metric = PRESETS[match.preset].metric
        key = (match.preset, " ".join(changes), _group_status(run, metric))
        groups.setdefault(key, []).append(run)
        if match.tied_with:
            note = f"ambiguous: as close to {', '.join(match.tied_with)}"
            group_notes[key] = note
            notes.append(f"{path}: {note}; counted under {match.preset}")

    order = {name: i for i, name in enumerate(PRESETS)}
    rows = []
    # preset order, then unchanged before changed, then finished before the rest
    for key in sorted(
        groups, key=lambda k: (order[k[0]], k[1] != "", k[1], k[2] != Status.FINISHED, k[2])
    ):
        name, changed, status = key
        rows.append(_row(name, changed, status, groups[key], group_notes.get(key, "")))
    return rows


def _row(name: str, changed: str, status: str, runs: list[Run], note: str) -> dict[str, Any]:
    preset = PRESETS[name]
    paper = preset.paper_number
    this_run = spread = difference = None
    if status == Status.FINISHED:
        values = [_metric_percent(r.summary, preset.metric) for r in runs]
        numbers = [v for v in values if v is not None]  # all of them: see _group_status
        this_run = round(statistics.fmean(numbers), 2)
        spread = round(statistics.stdev(numbers), 2) if len(numbers) > 1 else None
        difference = round(this_run - paper, 2) if paper is not None else None
    walls = [r.summary.get("wall_time_s") for r in runs]
    walls = [float(w) for w in walls if isinstance(w, (int, float)) and not isinstance(w, bool)]
    return {
        "preset": name,
        "paper_number": paper,
        "this_run": this_run,
        "spread": spread,
        "difference": difference,
        "runs": len(runs),
        "device": _distinct(r.summary.get("device_name") or r.summary.get("device") for r in runs),
        "wall_time_s": round(statistics.fmean(walls), 1) if walls else None,
        "changed": changed,
        "status": status,
        "metric": preset.metric,
        "seeds": " ".join(str(s) for s in sorted({r.config.seed for r in runs})),
        # older summaries lack eval_protocol: the config's is what the run evaluated with
        "eval_protocol": _distinct(
            r.summary.get("eval_protocol") or r.config.eval_protocol for r in runs
        ),
        "data_copy": _distinct(_data_copy(r.summary) for r in runs),
        "note": note,
        "run_dirs": "; ".join(str(r.path) for r in runs),
    }


# -- output -------------------------------------------------------------------------------------
def _cell(column: str, value: Any) -> str:
    """A value as the CSV and the markdown show it: percent with 2 decimals, signed difference."""
    if value is None:
        return ""
    if column == "difference":
        return f"{value:+.2f}"
    if column in ("this_run", "spread"):
        return f"{value:.2f}"
    if column == "paper_number":
        return f"{value:g}"  # as the paper quotes it: 90.4, 79.72
    if column == "wall_time_s":
        return f"{value:.1f}"
    return str(value)


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as CSV text, COLUMNS first (in order), any extra keys after them."""
    columns = list(COLUMNS) + [k for row in rows for k in row if k not in COLUMNS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(columns)), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(k, v) for k, v in row.items()})
    return buffer.getvalue()


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Write the table to `path` atomically (a reader never sees half a table)."""
    atomic_write_bytes(Path(path), to_csv(rows).encode())


def to_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The main columns as a markdown table; a changed row's preset reads `NAME (changed)`."""
    lines = [
        "| " + " | ".join(MARKDOWN_COLUMNS) + " |",
        "|" + "|".join(" --- " for _ in MARKDOWN_COLUMNS) + "|",
    ]
    for row in rows:
        cells = [_cell(c, row.get(c)) for c in MARKDOWN_COLUMNS]
        if row.get("changed"):
            cells[0] += " (changed)"
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


# -- the command --------------------------------------------------------------------------------
def add_reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the reproduce command's arguments."""
    parser.add_argument(
        "dirs",
        nargs="+",
        metavar="DIR",
        help="run folders, or folders above them (sweep folders, a runs/ folder): searched "
        "recursively for config.json + summary.json",
    )
    parser.add_argument(
        "--out",
        metavar="FILE.csv",
        help="also write the table as CSV here (atomically); without it, only print",
    )


def reproduce_main(args: argparse.Namespace) -> int:
    """Print (and write) the table; 0 with rows, 1 when no paper preset run was found, 2 for a
    missing folder or an unwritable --out."""
    for d in args.dirs:
        if not Path(d).is_dir():
            print(
                f"workbench: error: DIR: got {d!r}; allowed: existing folders of runs",
                file=sys.stderr,
            )
            return 2
    notes: list[str] = []
    rows = reproduction_table(find_runs(args.dirs), notes)
    for note in notes:
        print(f"workbench reproduce: {note}", file=sys.stderr)
    if not rows:
        print(
            f"workbench reproduce: no paper preset runs found in {', '.join(args.dirs)}",
            file=sys.stderr,
        )
        return 1
    print(to_markdown(rows))
    if args.out:
        try:
            write_csv(rows, args.out)
        except OSError as e:
            print(
                f"workbench: error: --out: cannot write {args.out!r} ({e.strerror}); allowed: a "
                "writable file path",
                file=sys.stderr,
            )
            return 2
        print(f"workbench reproduce: table written to {args.out}", file=sys.stderr)
    return 0
