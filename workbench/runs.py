"""Run folders as a researcher sees them: labels that tell runs apart, the runs under a root,
and the unfinished run a config would resume.

One home for what the panel's runs browser and overlays, notebooks/compare.ipynb and the
comparison tables show, so a run carries the same label everywhere:

    labels = run_labels([config_a, config_b])   # ['aux_depth=1', 'aux_depth=3']
    rows = list_runs("runs")                    # newest first: status, label, accuracies
    path = find_resumable("runs", config)       # a stopped run of this config, or None
    saved, summary = read_run_files(path)       # or UnreadableFile: why, in one line
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from workbench.config import FIELD_INFO, Config, saved_value
from workbench.records import (
    ENDED,
    LOCK_FILE,
    RESUMABLE_DIFFERENCES,
    RunFolderError,
    Status,
    UnreadableFile,
    read_json_object,
    read_json_quietly,
)

# fields that never tell two runs apart for a reader (where the run lives, how fast it went,
# how its data was read), and the ones a reader looks for first, so a cut label keeps them
NOT_LABELS = tuple(name for name, info in FIELD_INFO.items() if not info.in_labels)
FIRST_IN_LABELS = tuple(
    sorted(
        (n for n, i in FIELD_INFO.items() if i.label_rank < 99),
        key=lambda n: FIELD_INFO[n].label_rank,
    )
)
LABEL_FIELDS = 3  # at most this many fields in a label; the rest is counted ("+2")
SHORT_VALUES = {True: "on", False: "off"}


def varying_fields(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The config fields whose values differ between the runs: the ones readers look for
    first (FIRST_IN_LABELS), then the others in Config's order."""
    if len(configs) < 2:
        return []
    names = list(dict.fromkeys(name for c in configs for name in c))
    differ = [
        n
        for n in names
        if n not in NOT_LABELS
        and len({json.dumps(saved_value(c, n), sort_keys=True) for c in configs}) > 1
    ]
    return sorted(differ, key=lambda n: FIRST_IN_LABELS.index(n) if n in FIRST_IN_LABELS else 99)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return SHORT_VALUES[value]
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def label(values: Mapping[str, Any], limit: int = LABEL_FIELDS) -> str:
    """'aux_depth=1, method=parallel': the first `limit` fields, then how many more differ."""
    items = [f"{k}={_value(v)}" for k, v in values.items()]
    text = ", ".join(items[:limit]) or "run"
    return text + (f" +{len(items) - limit}" if len(items) > limit else "")


def run_labels(
    configs: Sequence[Mapping[str, Any]], names: Sequence[str] | None = None
) -> list[str]:
    """Each run's label: the fields that differ between the runs, at most LABEL_FIELDS of them.

    A lone run is labelled by its architecture and method. Runs that would share a label (a
    rerun of one config, or fields cut off) get the shortest end of their folder paths that
    tells them apart, so every label is unique; `names` are those folder paths (default: run 1,
    run 2, ...).
    """
    if not configs:
        return []
    names = list(names) if names is not None else [f"run {i + 1}" for i in range(len(configs))]
    differ = varying_fields(configs)
    if differ:
        labels = [label({n: saved_value(c, n) for n in differ}) for c in configs]
    else:
        labels = [f"{c.get('arch', 'run')} {c.get('method', '')}".strip() for c in configs]
    tied: dict[str, list[str]] = {}
    for text, name in zip(labels, names):
        tied.setdefault(text, []).append(name)
    return [
        f"{text} ({_distinct_tail(name, tied[text])})" if len(tied[text]) > 1 else text
        for text, name in zip(labels, names)
    ]


def folder_labels(paths: Sequence[Path], configs: Mapping[Path, Mapping[str, Any]]) -> list[str]:
    """Each folder's label: run_labels over the folders whose config was read (`configs`), so
    an unreadable folder cannot change the others' labels; an unreadable one is named by the
    end of its path that tells it apart ('k3', 'p1/run')."""
    readable = [p for p in paths if p in configs]
    names = [str(p) for p in readable]
    labels = dict(zip(readable, run_labels([configs[p] for p in readable], names)))
    return [labels.get(p) or _distinct_tail(str(p), [str(q) for q in paths]) for p in paths]


def _distinct_tail(name: str, others: Sequence[str]) -> str:
    """The shortest end of a folder path that no other path in `others` ends with: 'k1' for
    runs/k1, 'p1/run' for a sweep point's sweep/p1/run."""
    parts = Path(name).parts
    for n in range(1, len(parts) + 1):
        tail = parts[-n:]
        if sum(Path(o).parts[-n:] == tail for o in others) == 1:
            return "/".join(tail)
    return name


# -- the runs under a root -------------------------------------------------------------------
def run_folders(root: str | Path) -> list[Path]:
    """Every run folder (one holding config.json) at or below root, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [root] if (root / "config.json").is_file() else []
    found += [p.parent for p in root.rglob("config.json") if p.parent != root]
    return sorted(set(found), key=lambda p: (p / "config.json").stat().st_mtime, reverse=True)


def read_run_files(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run folder's config.json and summary.json ({} before the run first writes one), the
    way every reader of run folders reads them; UnreadableFile, one line naming the file and
    the problem, when either cannot be read or is not a JSON object."""
    config = read_json_object(path / "config.json")
    summary = path / "summary.json"
    return config, read_json_object(summary) if summary.is_file() else {}


def run_status(path: Path, summary: Mapping[str, Any] | None = None) -> str:
    """finished, stopped, failed, running (its lock is held), or interrupted (killed)."""
    summary = read_json_quietly(path / "summary.json") if summary is None else summary
    status = summary.get("status")
    if status in ENDED:
        return str(status)
    return Status.RUNNING if is_locked(path) else Status.INTERRUPTED


def is_locked(path: Path) -> bool:
    """Whether a run (in any process) holds the folder's lock now."""
    try:  # a shared lock is refused while a run holds its exclusive one; nothing is written
        fd = os.open(path / LOCK_FILE, os.O_RDONLY)
    except OSError:  # no lock file: no run ever held it
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def read_folders(
    paths: Sequence[Path], read: Callable[[Path], Any] | None = None
) -> tuple[dict[Path, Any], dict[Path, str]]:
    """Each folder read by `read` (read_run_files unless given), and the reason, in one line,
    of each that could not be: ({path: what was read}, {path: reason})."""
    reader = read or read_run_files
    found: dict[Path, Any] = {}
    errors: dict[Path, str] = {}
    for path in paths:
        try:
            found[path] = reader(path)
        except UnreadableFile as e:
            errors[path] = str(e)
    return found, errors


def list_runs(root: str | Path) -> list[dict[str, Any]]:
    """One row per run folder under root, newest first: run_dir, label, status, final and
    per-module test accuracy, wall time, device, epochs done; labels from folder_labels. A
    folder whose config.json or summary.json cannot be used has status `unreadable` and the
    reason in `error` (None for the others), and no numbers."""
    paths = run_folders(root)
    read, errors = read_folders(paths)
    labels = folder_labels(paths, {p: config for p, (config, _) in read.items()})
    rows = []
    for path, text in zip(paths, labels):
        config, summary = read.get(path, ({}, {}))
        rows.append(
            {
                "run_dir": str(path),
                "label": text,
                "status": Status.UNREADABLE.value if path in errors else run_status(path, summary),
                "final_test_acc": summary.get("final_test_acc"),
                "per_module_test_acc": list(summary.get("per_module_test_acc") or []),
                "per_module_probe_acc": list(summary.get("per_module_probe_acc") or []),
                "wall_time_s": summary.get("wall_time_s"),
                "device": summary.get("device"),
                "epochs_done": summary.get("epochs_done"),
                "method": config.get("method"),
                "n_modules": config.get("n_modules"),
                "error": errors.get(path),
            }
        )
    return rows


def same_config(saved: Mapping[str, Any], config: Config) -> bool:
    """Whether a saved config.json is this config (up to fields a resume may change)."""
    wanted = config.to_dict()
    return all(
        saved_value(saved, k) == v for k, v in wanted.items() if k not in RESUMABLE_DIFFERENCES
    )


def find_same_config(root: str | Path, config: Config) -> list[tuple[Path, str]]:
    """(folder, status) of every run of this config under root, newest first."""
    found = []
    for path in run_folders(root):
        saved = read_json_quietly(path / "config.json")
        if saved and same_config(saved, config):
            found.append((path, run_status(path)))
    return found


def find_resumable(root: str | Path, config: Config) -> Path | None:
    """The newest stopped or interrupted run of this config under root (what Start resumes)."""
    for path, status in find_same_config(root, config):
        if status in (Status.STOPPED, Status.INTERRUPTED):
            return path
    return None


def delete_run(path: str | Path) -> None:
    """Delete a run folder; refused (RunFolderError) for a folder without config.json or one
    whose run is in progress."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise RunFolderError(f"delete: {str(path)!r} is not a run folder (no config.json)")
    if is_locked(path):
        raise RunFolderError(f"delete: {str(path)!r} is in use by a running run; stop it first")
    shutil.rmtree(path)
