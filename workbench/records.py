"""The run folder: config, per-epoch metrics, summary and checkpoints, all written atomically.

    <out>/config.json        the config that produced the run
    <out>/metrics.jsonl      one row per epoch, module and split
    <out>/summary.json       status and the headline numbers, rewritten as the run goes
    <out>/checkpoints/       last.pt (resume point) and module_<k>.pt per finished module

Every file is replaced with os.replace from a temporary sibling, so a reader (or a crash) never
sees half a file, and a stopped or failed run leaves everything it finished readable.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from workbench.config import Config, ConfigError

# fields that may differ between a run and its resumption
RESUMABLE_DIFFERENCES = ("out", "device")


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def default_out(config: Config) -> str:
    return f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{config.arch}-{config.method}"


class RunDir:
    """One run's folder. `open` creates it, or reopens an unfinished run of the same config."""

    def __init__(self, path: Path, config: Config):
        self.path = path
        self.config = config
        self.checkpoints = path / "checkpoints"

    @classmethod
    def open(cls, config: Config) -> RunDir:
        """Create the run folder, or reopen it when it holds a run of this same config."""
        if not config.out:
            config = config.replace(out=default_out(config))
        path = Path(config.out)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"out: got {config.out!r}, a file; allowed: a folder path")
        saved = path / "config.json"
        if saved.exists():
            try:
                previous = Config.load(saved)
            except (ValueError, OSError) as e:
                raise ConfigError(
                    f"out: {config.out!r} holds an unreadable config.json ({e}); "
                    "allowed: a new folder, or one holding a run of this config"
                ) from None
            mismatch = [
                k
                for k, v in config.to_dict().items()
                if k not in RESUMABLE_DIFFERENCES and getattr(previous, k) != v
            ]
            if mismatch:
                k = mismatch[0]
                raise ConfigError(
                    f"out: {config.out!r} holds a run with {k}={getattr(previous, k)!r}, not "
                    f"{getattr(config, k)!r}; allowed: a new folder, or the same config to resume"
                )
        elif path.exists() and any(path.iterdir()):
            raise ConfigError(
                f"out: got {config.out!r}, a folder that holds other files; allowed: a new or "
                "empty folder, or one holding a run of this config"
            )
        run = cls(path, config)
        atomic_write_bytes(saved, (config.to_json() + "\n").encode())
        return run

    # -- summary ---------------------------------------------------------------------------
    def read_summary(self) -> dict[str, Any] | None:
        path = self.path / "summary.json"
        return json.loads(path.read_text()) if path.exists() else None

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.path / "summary.json", summary)

    # -- metrics ---------------------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def append_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Add rows by rewriting the file atomically (it stays small: one row per epoch)."""
        lines = [json.dumps(r, sort_keys=True) for r in self.read_metrics() + rows]
        atomic_write_bytes(self.path / "metrics.jsonl", ("\n".join(lines) + "\n").encode())

    def truncate_metrics(self, n_rows: int) -> None:
        """Drop rows written after the checkpoint a resumed run restarts from."""
        rows = self.read_metrics()[:n_rows]
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        atomic_write_bytes(self.path / "metrics.jsonl", text.encode())

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self, name: str, state: dict[str, Any]) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        path = self.checkpoints / name
        tmp = _temporary_sibling(path)
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def load_checkpoint(self, name: str) -> dict[str, Any] | None:
        path = self.checkpoints / name
        return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None


def read_metrics(run_path: str | Path) -> list[dict[str, Any]]:
    """The metrics rows of a run folder (what a live plot or a comparison reads)."""
    path = Path(run_path) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
