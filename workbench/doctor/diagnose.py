"""The doctor's whole examination: facts, tiny runs, CUDA checks; one JSON-ready report."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from workbench.doctor import cuda, facts
from workbench.doctor.checks import Check, one_line
from workbench.doctor.runs import (
    FULL,
    IMAGES_PER_S_SOURCE,
    PEAK_MEMORY_SOURCE,
    QUICK,
    SIGMAS,
    RunSpec,
    Size,
    cpu_specs,
    cuda_specs,
    run_in_process,
    run_torchrun,
)

MEASURED = {
    "images_per_s": IMAGES_PER_S_SOURCE,
    "peak_memory_bytes": PEAK_MEMORY_SOURCE,
    "seconds": "wall seconds around each run: data loading, start-up and evaluation included",
    "accuracy_floor": f"chance (0.1) plus {SIGMAS} standard deviations of a guessing net's "
    "accuracy on the run's class-balanced test images: a run must beat it",
}


class Examination:
    """Collects the report as the parts run: facts, runs, checks, warnings, skipped parts."""

    def __init__(self, progress: Callable[[str], None]):
        self.progress = progress
        self.checks: list[Check] = []
        self.warnings: list[str] = []
        self.skipped: list[dict[str, str]] = []
        self.runs: list[dict[str, Any]] = []
        self.warm_ups: list[dict[str, Any]] = []

    def skip(self, part: str, reason: str) -> None:
        self.skipped.append({"part": part, "reason": reason})

    def run(self, spec: RunSpec, size: Size, folder: Path) -> None:
        self.progress(f"run {spec.label} ...")
        runner = run_torchrun if spec.processes > 1 else run_in_process
        try:
            record, check = runner(spec, size, folder)
        except Exception as e:  # the runners report a failed run; this is anything else
            record = {"name": spec.label, "where": spec.where, "error": one_line(e)}
            check = Check(f"run {spec.label}", False, one_line(e))
        self.progress(f"  {check.line()}")
        self.runs.append(record)
        self.checks.append(check)

    def warm_up(self, spec: RunSpec, size: Size, folder: Path) -> None:
        """A run whose figures are not reported: the device's one-off start-up (oneDNN's
        kernel generation, a CUDA context, cuDNN's autotuning) lands here, not in the first
        method's images/s (on the 2-core CPU, a fresh process's first run trained at 550
        images/s, the next at 7,100)."""
        self.progress(f"warm-up {spec.label} ...")
        try:
            record, check = run_in_process(spec, size, folder / "warm-up")
        except Exception as e:
            record, check = {"error": one_line(e)}, Check(spec.label, False, one_line(e))
        self.warm_ups.append({"name": spec.label, "seconds": record.get("seconds")})
        if not check.passed:
            self.warnings.append(f"warm-up run {spec.label} failed: {check.reason}")

    def attempt(self, name: str, check: Callable[[], tuple[dict[str, Any], Check]]) -> Any:
        """A check that may raise: an exception is its failure, in one line."""
        self.progress(f"check {name} ...")
        try:
            details, verdict = check()
        except Exception as e:
            details, verdict = {"error": one_line(e)}, Check(name, False, one_line(e))
        self.progress(f"  {verdict.line()}")
        self.checks.append(verdict)
        return details


def diagnose(
    data_dir: str, quick: bool, progress: Callable[[str], None] = lambda line: None
) -> dict[str, Any]:
    """Examine this machine; the report (see workbench/doctor/__init__.py for its parts)."""
    start = time.perf_counter()
    exam = Examination(progress)
    versions = facts.versions()
    devices = facts.devices()
    chromium = facts.chromium()
    if chromium["path"] is None:
        exam.warnings.append(f"chromium for PNG export: {facts.NO_CHROMIUM}")
    datasets, data_checks, data_warnings = facts.datasets(data_dir)
    exam.checks += data_checks
    exam.warnings += data_warnings
    size = QUICK if quick else FULL
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cuda_details: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="workbench-doctor-") as tmp:
        folder = Path(tmp)
        exam.warm_up(RunSpec("parallel"), size, folder)
        for spec in cpu_specs():
            exam.run(spec, size, folder)
        gloo = RunSpec("parallel", processes=2)
        if quick:
            exam.skip(gloo.label, "--quick: the CPU runs in this process only")
        else:
            exam.run(gloo, size, folder)
        if not gpus:
            built = torch.version.cuda
            why = f"torch built with CUDA {built} sees no GPU" if built else "torch built for CPU"
            exam.skip("CUDA runs and CUDA checks", f"no CUDA ({why})")
        elif quick:
            exam.skip("CUDA runs and CUDA checks", "--quick: the CPU runs only")
        else:
            cuda_details = _cuda_part(exam, size, folder, gpus)
    for device in devices:
        mine = [r for r in exam.runs if r["where"] == device["device"]]
        if mine:
            capability = tuple(device["capability"]) if device["capability"] else None
            exam.checks.append(cuda.precision_verdict(device["device"], capability, mine))
    failed = [c for c in exam.checks if not c.passed]
    report: dict[str, Any] = {
        "passed": not failed,
        "summary": (
            f"{len(failed)} of {len(exam.checks)} checks failed"
            if failed
            else f"all {len(exam.checks)} checks passed"
        ),
        "quick": quick,
        "wall_s": round(time.perf_counter() - start, 2),
        "skipped": exam.skipped,
        "failures": [f"{c.name}: {c.reason}" for c in failed],
        "warnings": exam.warnings,
        "versions": versions,
        "devices": devices,
        "chromium": chromium,
        "datasets": datasets,
        "warm_ups": exam.warm_ups,
        "runs": exam.runs,
        "measured": MEASURED,
        "checks": [c.to_dict() for c in exam.checks],
    }
    if cuda_details:
        report["cuda_checks"] = cuda_details
    return report


def _cuda_part(exam: Examination, size: Size, folder: Path, gpus: int) -> dict[str, Any]:
    """Each method on cuda:0 (without and with compile), a parallel run on each other GPU,
    torchrun on 2 GPUs where there are 2; then the sync, memory and memory-estimate checks on
    cuda:0."""
    exam.warm_up(RunSpec("parallel", device="cuda"), size, folder)
    for spec in cuda_specs(gpus):
        exam.run(spec, size, folder)
    if gpus >= 2:  # the pipelined runs above put their 2 modules on cuda:0 and cuda:1
        exam.run(RunSpec("parallel", device="cuda", processes=2), size, folder)
    else:
        exam.skip("pipelined run on 2 GPUs", "one GPU only: the pipeline's 2 workers shared it")
        exam.skip("torchrun x2 (nccl)", "one GPU only: torchrun's 2 processes need a GPU each")
    small = RunSpec("parallel", device="cuda")
    sync = exam.attempt(
        "no host sync inside training steps",
        lambda: cuda.check_no_host_sync(small.config(size, folder / "sync")),
    )
    # after the runs above: cuBLAS's workspace and the like, allocated once per process, exist
    memory = exam.attempt(
        "GPU memory freed after a run",
        lambda: cuda.check_memory_freed(small.config(size, folder / "memory")),
    )
    estimate = exam.attempt(
        "memory estimate near the measured peak",
        lambda: cuda.check_memory_estimate(small.config(size, folder / "estimate")),
    )
    return {"sync": sync, "memory": memory, "estimate": estimate}
