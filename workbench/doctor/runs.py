"""The doctor's tiny real runs: each method on the embedded digits, in this process or torchrun.

Every run is a real `run_experiment(Config(...))` (or `torchrun ... -m workbench run`) into a
temporary folder, and passes when it finished with its last module's test accuracy above
`accuracy_floor(n_test)`: chance (0.1 on the 10 digit classes) plus 5 standard deviations of
what a net that learned nothing scores on n_test class-balanced test images. A net that
predicts one class scores exactly 0.1 there; one that guesses scores Binomial(n_test, 0.1) /
n_test, standard deviation sqrt(0.09 / n_test): 0.019 for 256 images, so the floor is 0.194
(0.166 for 512), which a net at chance passes with probability under 1e-6. Measured on a
2-core CPU, 1 epoch on 512 digits (256 for the test) reached 0.37-0.53 for every method.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from workbench.bench.ddp import run_bounded, torchrun
from workbench.config import Config
from workbench.doctor.checks import Check, one_line
from workbench.records import Status

CHANCE = 0.1  # mnist-5k's 10 classes, its test subsets class-balanced
SIGMAS = 5  # see the module's docstring
IN_PROCESS_LIMIT_S = 180.0  # a run past it is stopped (its stop flag, seen between steps)
TORCHRUN_LIMIT_S = 180.0  # a torchrun run past it is killed (its process group) and fails
IMAGES_PER_S_SOURCE = (
    "metrics.jsonl's training rows: images trained / seconds of the training passes "
    "(data loading, evaluation, BatchNorm re-estimates and checkpoints left out)"
)
PEAK_MEMORY_SOURCE = (
    "summary.json's peak_memory_bytes: on a GPU torch's peak allocated bytes; on the CPU this "
    "process's peak resident set since the run began (torch itself included)"
)


@dataclass(frozen=True)
class Size:
    """How much data a tiny run trains and tests on."""

    n_train: int
    n_test: int


QUICK = Size(n_train=512, n_test=256)  # --quick: CI bounds the doctor's time with it
FULL = Size(n_train=1024, n_test=512)


@dataclass(frozen=True)
class RunSpec:
    """One tiny run: a method on a device, in this process or in `processes` torchrun ones."""

    method: str
    device: str = "cpu"  # cpu or cuda
    gpu: int = 0  # which GPU, on cuda (the current device while it runs)
    pipeline: bool = False
    compile: bool = False
    processes: int = 1  # more than 1: a torchrun run (gloo on the CPU, NCCL on GPUs)

    @property
    def where(self) -> str:
        """The device it trains on: cpu or cuda:<gpu> (torchrun's rank 0 and the pipeline's
        first worker included)."""
        return "cpu" if self.device == "cpu" else f"cuda:{self.gpu}"

    @property
    def label(self) -> str:
        parts = [self.where, self.method]
        if self.pipeline:
            parts.append("pipeline")
        if self.compile:
            parts.append("compile")
        if self.processes > 1:
            backend = "gloo" if self.device == "cpu" else "nccl"
            parts.append(f"torchrun x{self.processes} ({backend})")
        return " ".join(parts)

    def config(self, size: Size, out: Path) -> Config:
        """The run's config: 2 modules of width 8, batch 64, 1 epoch (multilap: 2 laps of 1)."""
        multilap = self.method == "multilap"  # laps <= epochs: each lap has an epoch
        return Config(
            dataset="mnist-5k",
            n_train=size.n_train,
            n_test=size.n_test,
            width=8,
            n_modules=2,
            batch_size=64,
            epochs=2 if multilap else 1,
            laps=2,
            method=self.method,
            pipeline=self.pipeline,
            compile=self.compile,
            device=self.device,
            precision="auto",
            out=str(out),
        )


METHOD_SPECS = (
    RunSpec("sequential"),
    RunSpec("parallel"),
    RunSpec("multilap"),
    RunSpec("end-to-end"),
    RunSpec("parallel", pipeline=True),  # worker processes (a GPU each where there are several)
)


def cpu_specs() -> list[RunSpec]:
    return list(METHOD_SPECS)


def cuda_specs(gpu_count: int) -> list[RunSpec]:
    """Each method on cuda:0 without and with compile; one parallel run on each other GPU."""
    on_first = [replace(s, device="cuda") for s in METHOD_SPECS]
    compiled = [replace(s, compile=True) for s in on_first]
    others = [RunSpec("parallel", device="cuda", gpu=i) for i in range(1, gpu_count)]
    return [*on_first, *compiled, *others]


def accuracy_floor(n_test: int) -> float:
    """The test accuracy a run must beat: chance plus SIGMAS standard deviations of a
    guessing net's accuracy on n_test images (see the module's docstring)."""
    return CHANCE + SIGMAS * math.sqrt(CHANCE * (1 - CHANCE) / n_test)


def training_images_per_s(rows: list[dict[str, Any]]) -> float | None:
    """Images trained per second of training pass, over a run's metrics rows.

    One training pass (a global epoch) writes a row per module it trained, all with the pass's
    images/s and seconds (parallel and end-to-end train every module in one pass), so each
    pass is counted once. None when no training row was written."""
    passes: dict[int, tuple[float, float]] = {}
    for row in rows:
        if row.get("split") == "train" and row.get("seconds"):
            passes.setdefault(row["global_epoch"], (row["images_per_s"], row["seconds"]))
    seconds = sum(s for _, s in passes.values())
    if not seconds:
        return None
    return sum(ips * s for ips, s in passes.values()) / seconds


def run_record(
    spec: RunSpec,
    config: Config,
    summary: dict[str, Any] | None,
    seconds: float,
    error: str | None = None,
) -> tuple[dict[str, Any], Check]:
    """What a finished (or failed) run measured, and its verdict."""
    from workbench.records import read_metrics

    summary = summary or {}
    floor = accuracy_floor(config.n_test)
    accuracy = summary.get("final_test_acc")
    record: dict[str, Any] = {
        "name": spec.label,
        "method": spec.method,
        "where": spec.where,
        "device": summary.get("device", spec.device),
        "pipeline": spec.pipeline,
        "compile": spec.compile,
        "processes": spec.processes,
        "n_train": config.n_train,
        "n_test": config.n_test,
        "epochs": config.epochs,
        "status": summary.get("status", Status.FAILED),
        "final_test_acc": accuracy,
        "accuracy_floor": round(floor, 4),
        "per_module_test_acc": summary.get("per_module_test_acc"),
        "images_per_s": None,
        "peak_memory_bytes": summary.get("peak_memory_bytes"),
        "precision": summary.get("precision"),
        "precision_reason": summary.get("precision_reason"),
        "tf32": summary.get("tf32"),
        "world_size": summary.get("world_size"),
        "seconds": round(seconds, 3),
    }
    if summary.get("run_dir"):
        record["images_per_s"] = training_images_per_s(read_metrics(summary["run_dir"]))
    if summary.get("pipeline_workers"):  # each module's worker: its device and threads
        record["pipeline_devices"] = [w.get("device") for w in summary["pipeline_workers"]]
    if error is None and record["status"] != Status.FINISHED:
        error = f"ended {record['status']}" + (
            f": {summary['error']}" if summary.get("error") else ""
        )
    if error is None and (accuracy is None or accuracy <= floor):
        error = f"last module's test accuracy {accuracy} is not above {floor:.3f} (chance 0.1)"
    if error is not None:
        record["error"] = error
        return record, Check(f"run {spec.label}", False, error)
    reason = (
        f"finished in {seconds:.1f} s; last module's test accuracy {accuracy:.3f} > {floor:.3f}"
    )
    return record, Check(f"run {spec.label}", True, reason)


def run_in_process(
    spec: RunSpec, size: Size, folder: Path, limit_s: float = IN_PROCESS_LIMIT_S
) -> tuple[dict[str, Any], Check]:
    """`run_experiment` here, stopped (and failed) past `limit_s` seconds."""
    import torch

    from workbench.training import run_experiment

    config = spec.config(size, folder / spec.label.replace(" ", "-").replace(":", ""))
    stop = threading.Event()
    overran = threading.Event()

    def past_limit() -> None:
        overran.set()
        stop.set()

    timer = threading.Timer(limit_s, past_limit)
    timer.daemon = True
    start = time.perf_counter()
    summary, error = None, None
    timer.start()
    try:
        # "cuda" is the current GPU: the run, its data and its memory figures are on spec.gpu
        where = torch.cuda.device(spec.gpu) if spec.device == "cuda" else nullcontext()
        with where:
            summary = run_experiment(config, stop=stop)
    except Exception as e:  # a failed run is a failed check, not the doctor's end
        error = one_line(e)
    finally:
        timer.cancel()
    seconds = time.perf_counter() - start
    if summary and summary.get("status") == Status.STOPPED:
        if not overran.is_set():  # Ctrl-C: run_experiment ends the run as stopped
            raise KeyboardInterrupt
        error = f"ran past {limit_s:.0f} s and was stopped"
    return run_record(spec, config, summary, seconds, error)


def run_torchrun(
    spec: RunSpec, size: Size, folder: Path, limit_s: float = TORCHRUN_LIMIT_S
) -> tuple[dict[str, Any], Check]:
    """`torchrun --nproc-per-node N -m workbench run ...` on 127.0.0.1, killed past `limit_s`."""
    import workbench

    out = folder / spec.label.split(" (")[0].replace(" ", "-").replace(":", "")
    config = spec.config(size, out)
    config_file = folder / f"{out.name}.json"
    config_file.write_text(config.to_json())
    command = torchrun(spec.processes, "workbench", "run", "--quiet", "--config", str(config_file))
    package_root = str(Path(workbench.__file__).resolve().parents[1])  # this very workbench
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    if spec.device == "cpu":  # one thread a process: the processes share the cores
        env["OMP_NUM_THREADS"] = "1"
    start = time.perf_counter()
    code, output = run_bounded(command, env, limit_s, cwd=folder)  # stops all on Ctrl-C too
    error = f"ran past {limit_s:.0f} s and was killed" if code == 124 else None
    seconds = time.perf_counter() - start
    summary = None
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        pass
    if error is None and code != 0:
        last = [line for line in output.splitlines() if line.strip()][-1:] or ["no output"]
        error = f"exit code {code}: {last[0].strip()}"
    record, check = run_record(spec, config, summary, seconds, error)
    if summary is not None and summary.get("world_size") != spec.processes and check.passed:
        reason = f"trained in {summary.get('world_size')} processes, not {spec.processes}"
        record["error"] = reason
        check = Check(check.name, False, reason)
    return record, check
