"""The run folder: config, per-epoch metrics, summary and checkpoints, all written atomically.

    <out>/.lock              held by the one process writing the run (pid, host, start time)
    <out>/config.json        the config that produced the run
    <out>/metrics.jsonl      one row per epoch, module and split (strict JSON: null, never NaN)
    <out>/summary.json       status and the headline numbers, rewritten as the run goes
    <out>/checkpoints/       last.pt (resume point) and module_<k>.pt per finished module

Every file is replaced with os.replace from a temporary sibling, so a reader (or a crash) never
sees half a file, and a stopped or failed run leaves everything it finished readable; the next
run in the folder removes the siblings a killed writer left. Checkpoints hold tensors and plain
data only, and are loaded with `weights_only=True`: loading a run folder never runs its code.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import json
import math
import os
import pickle
import re
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from workbench.config import RESUMABLE_DIFFERENCES, Config, ConfigError

LOCK_FILE = ".lock"
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # what _temporary_sibling names
_REASONS = {  # the OS's words for what the user can act on, without the errno number
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "a read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a file",
}


class Status(str, enum.Enum):
    """A run's status, as summary.json (and a sweep point's point.json) say it. A str, so it
    is written to JSON and compared with what was read back as the plain word."""

    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # never written: a run that says running but holds no lock
    UNREADABLE = "unreadable"  # never written: a folder whose files the readers cannot use

    __hash__ = str.__hash__  # a dict keyed by the words finds the members too

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:  # a summary dict prints as it did when it held the plain word
        return repr(self.value)


ENDED = (Status.FINISHED, Status.STOPPED, Status.FAILED)  # what a run that returned says


class RunFolderError(ConfigError):
    """The run folder cannot be used (busy, read-only, below a file); one line for the user."""


class UnreadableFile(RunFolderError):
    """A run folder's file cannot be read, is not JSON, or is not a JSON object (a hand edit,
    a copy gone wrong). The message is one line naming the file and the problem, what the
    readers (compare, the runs browser, Series) show in the run's row instead of its numbers:
    `config.json: not valid JSON (Expecting value: line 1 column 1)`."""


class RunFailed(Exception):
    """The run ended as failed for a reason the user can act on; the message is one line."""

    def _render_traceback_(self) -> list[str]:  # IPython (notebooks): the line, no traceback
        return [f"{type(self).__name__}: {self}"]


class WriteError(RunFailed):
    """A file of the run folder could not be written (disk full, read-only, permissions)."""


class CheckpointError(ConfigError):
    """A checkpoint cannot be loaded: truncated, corrupt, or holding more than tensors and data."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(
            f"checkpoint: got an unreadable {path} ({reason}); allowed: delete that file to "
            "train this run again from its start, or delete the run folder"
        )


def os_reason(e: OSError) -> str:
    """A failed file operation in a few words (`no space left on the device`)."""
    return _REASONS.get(e.errno or 0, e.strerror or str(e))


def strict_json(obj: Any) -> Any:
    """`obj` with every NaN or infinity replaced by None, so strict JSON readers accept it."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def _dumps(obj: Any, **kwargs: Any) -> str:
    return json.dumps(strict_json(obj), allow_nan=False, **kwargs)


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Have `write` fill a temporary sibling, then rename it over `path`: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # frees the space a full disk needs for the error record
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (_dumps(obj, indent=2, sort_keys=True) + "\n").encode())


_JSON_TYPES = {list: "an array", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}  # fmt: skip


def _read_text(path: Path) -> str:
    """A run folder's text file; UnreadableFile when it cannot be read or is not UTF-8."""
    try:
        return path.read_bytes().decode()
    except OSError as e:
        raise UnreadableFile(f"{path.name}: cannot be read ({os_reason(e)})") from None
    except UnicodeDecodeError as e:
        problem = f"not UTF-8 text ({e.reason} at byte {e.start})"
        raise UnreadableFile(f"{path.name}: {problem}") from None


def _json_object(name: str, text: str, line: int | None = None) -> dict[str, Any]:
    """`text` (file `name`, or its `line`) parsed as a JSON object; UnreadableFile otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:  # a .jsonl line is told by its number in the file
        where = f"line {line or e.lineno} column {e.colno}"
        raise UnreadableFile(f"{name}: not valid JSON ({e.msg}: {where})") from None
    if not isinstance(value, dict):
        at = f"line {line} " if line else ""
        holds = _JSON_TYPES.get(type(value), "a value")
        raise UnreadableFile(f"{name}: {at}holds {holds}, not a JSON object")
    return value


def read_json_object(path: Path) -> dict[str, Any]:
    """A run folder's JSON file (config.json, summary.json) as a dict; UnreadableFile naming the
    file and the problem in one line when it cannot be read or holds no JSON object."""
    return _json_object(path.name, _read_text(path))


def read_json_quietly(path: Path) -> dict[str, Any]:
    """A JSON file as a dict; {} when missing or unreadable (being replaced, hand-edited)."""
    try:
        return read_json_object(path)
    except UnreadableFile:
        return {}


def remove_temporary_files(folder: Path) -> int:
    """Delete the temporary siblings interrupted writes left in `folder` (and one level down)."""
    removed = 0
    for sub in [folder, *(p for p in folder.iterdir() if p.is_dir())] if folder.is_dir() else []:
        for p in sub.iterdir():
            if _TEMPORARY.match(p.name) and p.is_file():
                p.unlink(missing_ok=True)
                removed += 1
    return removed


def _torch_save(state: dict[str, Any], f: IO[bytes]) -> None:
    """torch.save through Python's file object, so a full disk raises its OSError: torch's own
    writer reports it as a RuntimeError about zip offsets."""
    failed: list[OSError] = []

    class Sink:
        def write(self, data: bytes) -> int:
            try:
                return f.write(data)
            except OSError as e:
                failed.append(e)
                raise

        def flush(self) -> None:
            f.flush()

    try:
        import torch  # here, not at the top: see load_checkpoint

        torch.save(state, Sink())
    except RuntimeError:
        if failed:
            raise failed[0] from None
        raise


def default_out(config: Config) -> str:
    return f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{config.arch}-{config.method}"


# -- one writer per folder ---------------------------------------------------------------------
_HELD: set[int] = set()  # lock file descriptors this process holds


def _drop_inherited_locks() -> None:
    # a forked child (a DataLoader worker) shares the parent's lock; closing its copy of the
    # descriptor leaves the lock with the parent alone, so it ends when the parent does
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


class RunLock:
    """An exclusive lock on `<folder>/.lock` (flock): released by `release` or when the process
    ends, however it ends, so a killed writer leaves no stale lock. The file names the holder."""

    def __init__(self, folder: Path, what: str = "run"):
        self.folder, self.what = folder, what
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise RunFolderError naming the process that holds it."""
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunFolderError(
                f"out: got {str(self.folder)!r}, a folder another {self.what} is writing "
                f"({holder}); allowed: another folder, or this one once that {self.what} ends"
            ) from None
        self.fd = fd
        _HELD.add(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": _now_text()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            _HELD.discard(self.fd)
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _now_text() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _holder(fd: int) -> str:
    """Who holds a lock, from its file (the holder writes it just after locking)."""
    for _ in range(20):
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"null")
        except ValueError:
            info = None
        if isinstance(info, dict):
            return f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started_at')}"
        time.sleep(0.025)
    return "holder unknown"


def _check_folder_path(path: Path) -> None:
    """Refuse an `out` that is a file, or lies below one, in one line."""
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"out: got {str(path)!r}, a file; allowed: a folder path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunFolderError(
                    f"out: got {str(path)!r}, below {str(parent)!r}, which is a file; "
                    "allowed: a folder path"
                )
            return


class RunDir:
    """One run's folder. `open` creates it, or reopens an unfinished run of the same config, and
    holds the folder's lock until `close` (use it as a context manager)."""

    def __init__(self, path: Path, config: Config, lock: RunLock | None = None):
        self.path = path
        self.config = config
        self.checkpoints = path / "checkpoints"
        self.lock = lock

    @classmethod
    def open(cls, config: Config) -> RunDir:
        """Lock the run folder, then create it or reopen it if it holds a run of this config.

        The lock comes before anything in the folder is written; refused in one line: a busy
        folder, a folder that holds other files or another config's run, one that cannot be
        written, and a path below a file.
        """
        if not config.out:
            config = config.replace(out=default_out(config))
        path = Path(config.out)
        _check_folder_path(path)
        if path.is_dir():
            _refuse_foreign(path, config)  # before the lock file: leave others' folders alone
        lock = RunLock(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except OSError as e:
            raise RunFolderError(
                f"out: got {config.out!r}, which cannot be written ({os_reason(e)}); allowed: "
                "a folder you can write to"
            ) from None
        try:
            _check_same_config(path, config)  # under the lock: no other run starts meanwhile
            remove_temporary_files(path)
            run = cls(path, config, lock)
            run._write(path / "config.json", (config.to_json() + "\n").encode())
        except BaseException:
            lock.release()
            raise
        return run

    def close(self) -> None:
        """Release the folder's lock (the run is over, whatever its status)."""
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, path: Path, data: bytes | Callable[[IO[bytes]], Any]) -> None:
        """Atomically write one file of the folder; a failure is a one-line WriteError."""
        try:
            atomic_write(path, data if callable(data) else lambda f: f.write(data))
        except OSError as e:
            raise WriteError(
                f"out: cannot write {str(path)!r} ({os_reason(e)}); allowed: free space or "
                "write access there, then the same command again (it resumes the run)"
            ) from None

    # -- summary ---------------------------------------------------------------------------
    def read_summary(self) -> dict[str, Any] | None:
        """summary.json, or None when absent or unreadable (a hand edit: the run rewrites it)."""
        try:
            return json.loads((self.path / "summary.json").read_text())
        except (OSError, ValueError):
            return None

    def write_summary(self, summary: dict[str, Any]) -> None:
        text = _dumps(summary, indent=2, sort_keys=True) + "\n"
        self._write(self.path / "summary.json", text.encode())

    # -- metrics ---------------------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def append_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Add rows by rewriting the file atomically (it stays small: one row per epoch)."""
        self._write_metrics(self.read_metrics() + rows)

    def truncate_metrics(self, n_rows: int) -> None:
        """Drop rows written after the checkpoint a resumed run restarts from."""
        self._write_metrics(self.read_metrics()[:n_rows])

    def _write_metrics(self, rows: list[dict[str, Any]]) -> None:
        text = "".join(_dumps(r, sort_keys=True) + "\n" for r in rows)
        self._write(self.path / "metrics.jsonl", text.encode())

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self, name: str, state: dict[str, Any]) -> None:
        """Save tensors and plain data (what `weights_only` loading admits) atomically."""
        self._write(self.checkpoints / name, lambda f: _torch_save(state, f))

    def load_checkpoint(self, name: str) -> dict[str, Any] | None:
        """A checkpoint's contents, None when absent; CheckpointError when it cannot be used."""
        path = self.checkpoints / name
        if not path.exists():
            return None
        # torch is imported where checkpoints are read and written only: the sweep's point
        # processes import this module for its atomic writes, and torch costs them ~2 s each
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise CheckpointError(
                path, "it holds objects other than tensors and plain data: refused, not run"
            ) from None
        except Exception as e:  # truncated or foreign: torch says so in many ways
            first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise CheckpointError(path, f"truncated or corrupt: {first.strip()[:160]}") from None
        if not isinstance(state, dict):
            raise CheckpointError(path, "not a workbench checkpoint")
        return state


def _refuse_foreign(path: Path, config: Config) -> None:
    """Refuse a folder holding files but no run: nothing but a lock or a write's leftovers."""
    if (path / "config.json").exists():
        return
    if any(p.name != LOCK_FILE and not _TEMPORARY.match(p.name) for p in path.iterdir()):
        raise RunFolderError(
            f"out: got {config.out!r}, a folder that holds other files; allowed: a new or "
            "empty folder, or one holding a run of this config"
        )


def _check_same_config(path: Path, config: Config) -> None:
    saved = path / "config.json"
    if not saved.exists():
        _refuse_foreign(path, config)  # files that appeared after the first look
        return
    try:
        previous = Config.load(saved)
    except (ValueError, OSError) as e:
        raise RunFolderError(
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
        raise RunFolderError(
            f"out: {config.out!r} holds a run with {k}={getattr(previous, k)!r}, not "
            f"{getattr(config, k)!r}; allowed: a new folder, or the same config to resume"
        )


def read_metrics(run_path: str | Path) -> list[dict[str, Any]]:
    """The metrics rows of a run folder (what a live plot or a comparison reads); UnreadableFile
    naming the line when one is not a JSON object (a hand edit: writes replace the whole file)."""
    path = Path(run_path) / "metrics.jsonl"
    if not path.exists():
        return []
    return [
        _json_object(path.name, line, number)
        for number, line in enumerate(_read_text(path).splitlines(), start=1)
        if line.strip()
    ]


def format_results(summary: dict[str, Any]) -> str:
    """The per-module table printed at the end of a run."""
    accs = summary.get("per_module_test_acc") or []
    probes = summary.get("per_module_probe_acc") or []
    lines = ["module  test acc" + ("  probe acc" if probes else "")]
    for k, acc in enumerate(accs):
        line = f"{k + 1:>6}  {acc:8.4f}"
        if probes:
            line += f"  {probes[k]:9.4f}"
        lines.append(line)
    if summary.get("ensemble_test_acc") is not None:
        lines.append(f"ensemble {summary['ensemble_test_acc']:8.4f}")
    lines.append(
        f"status {summary['status']}, wall time {summary.get('wall_time_s', 0):.1f} s, "
        f"device {summary.get('device')}, run folder {summary.get('run_dir')}"
    )
    return "\n".join(lines)
