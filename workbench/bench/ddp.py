"""The ddp section: one run's data-parallel scaling from one process to two (torchrun).

The same `workbench run` (sequential, one epoch per module, the bench's network and data) is
started as real processes: on the CPU, 1 process with 1 thread, 1 process with 2 threads, and
torchrun's 2 processes with 1 thread each (gloo); on a machine with 2 GPUs or more, 1 process
on 1 GPU against torchrun's 2 processes on 2 GPUs (NCCL). Each variant's speed is the images/s
of its training passes as the run folder's metrics record them (start-up, data loading and
evaluation left out), median over the repeats after a warm-up, the variants in turn.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from workbench.bench.common import one_line

RUN_TIMEOUT_S = 3600  # one variant's run; past it the bench kills it and reports the error
ONE_THREAD, TWO_THREADS = "1 process x 1 thread", "1 process x 2 threads"
DDP = "2 processes x 1 thread (torchrun)"


class DDPSections:
    """The Bench's ddp section (it reads its config, device, tmp folder and side_by_side)."""

    def ddp(self) -> dict[str, Any]:
        """images/s of 2 torchrun processes against 1 process, as ratios."""
        torch = self.torch
        if self.device.type == "cuda":
            if torch.cuda.device_count() < 2:
                return {"skipped": "one GPU: torchrun's 2 processes need a GPU each"}
            variants = {
                "1 process x 1 GPU": (1, None, "0"),
                "2 processes x 1 GPU": (2, None, "0,1"),
            }
        else:
            variants = {ONE_THREAD: (1, 1, None), TWO_THREADS: (1, 2, None), DDP: (2, 1, None)}
        speeds: dict[str, list[float]] = {name: [] for name in variants}

        def timed(name: str) -> list[float]:
            processes, threads, gpus = variants[name]
            ips = self.run_processes(processes, threads, gpus)
            speeds[name].append(ips)
            return [1 / ips]

        try:
            self.side_by_side({name: lambda name=name: timed(name) for name in variants})
        except RuntimeError as e:
            return {"skipped": f"a run failed: {one_line(e)}"}
        median = {name: statistics.median(v[1:] or v) for name, v in speeds.items()}
        out: dict[str, Any] = {
            "what": "workbench run (sequential, one epoch per module) as real processes; "
            "images/s of the training passes from the run's metrics, median over the repeats "
            "after a warm-up",
            "backend": "nccl" if self.device.type == "cuda" else "gloo",
            "images_per_s": median,
        }
        names = list(variants)
        if self.device.type == "cuda":
            out["two_vs_one_gpu"] = median[names[1]] / median[names[0]]
        else:
            out["ddp_vs_one_thread"] = median[DDP] / median[ONE_THREAD]
            out["ddp_vs_two_threads"] = median[DDP] / median[TWO_THREADS]
        return out

    def run_processes(self, processes: int, threads: int | None, gpus: str | None) -> float:
        """One `workbench run` in `processes` processes: its training images/s."""
        folder = Path(tempfile.mkdtemp(dir=self.tmp))
        config = folder / "config.json"
        config.write_text(
            self.config.replace(method="sequential", out=str(folder / "run")).to_json()
        )
        args = ["workbench", "run", "--config", str(config), "--quiet"]
        command = torchrun(processes, *args) if processes > 1 else [sys.executable, "-m", *args]
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus
        code, output = run_bounded(command, env, RUN_TIMEOUT_S)
        if code != 0:
            raise RuntimeError(f"{' '.join(command)} exited {code}: {output[-2000:]}")
        rows = [r for r in read_rows(folder / "run") if r["split"] == "train"]
        seconds = sum(r["seconds"] for r in rows)
        return sum(r["images_per_s"] * r["seconds"] for r in rows) / seconds


def read_rows(run: Path) -> list[dict[str, Any]]:
    text = (run / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (torchrun's rendezvous binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(processes: int, *args: str) -> list[str]:
    """The command running `python -m ARGS` in `processes` torchrun processes on 127.0.0.1
    (torchrun as this interpreter's module: no launcher on PATH needed)."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--master-addr", "127.0.0.1",
        "--master-port", str(free_port()), "--nproc-per-node", str(processes), "-m", *args,
    ]  # fmt: skip


def run_bounded(
    command: list[str], env: dict[str, str], timeout: float, cwd: str | Path | None = None
) -> tuple[int, str]:
    """Run `command` to its end: (exit code, output). Past `timeout` seconds (exit code 124),
    or on Ctrl-C, it and every process below it (torchrun's workers sit in sessions of their
    own) are stopped: SIGTERM first (torchrun passes it on, the runs stop cleanly), then
    SIGKILL."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output
    except subprocess.TimeoutExpired:
        _stop_tree(process, grace_s=min(10.0, timeout))
        output, _ = process.communicate()
        return 124, output + f"\n(killed after {timeout:.0f} s)"
    except BaseException:  # Ctrl-C: nothing is left behind
        _stop_tree(process, grace_s=0.0)
        process.wait()
        raise


def _stop_tree(process: subprocess.Popen, grace_s: float) -> None:
    below = descendants(process.pid)
    process.send_signal(signal.SIGTERM)
    time.sleep(grace_s)
    for pid in [process.pid, *below]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (Linux; elsewhere none are found)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def ddp_markdown(section: dict[str, Any]) -> list[str]:
    """bench.md's lines for the ddp section."""
    rows = [f"| {name} | {ips:.0f} |" for name, ips in section["images_per_s"].items()]
    ratios = [
        f"{label}: {section[key]:.3g}x"
        for key, label in (
            ("ddp_vs_one_thread", "2 processes x 1 thread / 1 process x 1 thread"),
            ("ddp_vs_two_threads", "2 processes x 1 thread / 1 process x 2 threads"),
            ("two_vs_one_gpu", "2 GPUs / 1 GPU"),
        )
        if key in section
    ]
    table = "\n".join(["| variant | training images/s |", "|---|---|", *rows])
    return [
        f"## DDP: one run in 2 processes (torchrun, {section['backend']})",
        table,
        " · ".join(ratios),
        f"{section['what']}.",
    ]
