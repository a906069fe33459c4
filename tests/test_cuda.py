"""The doctor's CUDA checks on a real GPU; skipped without one (`pytest -m cuda` selects them).

The same checks `workbench doctor` runs where CUDA is: no host sync inside training steps (a
small parallel run's steps under CUDA's sync debug mode), GPU memory back to its level after a
run returns (no gc.collect()), and each run's precision against the capability table. Their
logic is tested on the CPU in tests/test_doctor.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workbench.doctor import cuda
from workbench.doctor.runs import QUICK, RunSpec, run_in_process, run_torchrun
from workbench.training.device import choose_precision, tf32_in_effect

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU (workbench doctor runs the same checks where there is one)",
    ),
]
SMALL = RunSpec("parallel", device="cuda")


def test_no_host_sync_inside_training_steps(tmp_path: Path) -> None:
    config = SMALL.config(QUICK, tmp_path / "run")
    details, check = cuda.check_no_host_sync(config)
    assert details["steps"] == QUICK.n_train // config.batch_size
    assert check.passed, check.reason


def test_gpu_memory_is_freed_after_a_run(tmp_path: Path) -> None:
    # a first run allocates what a process keeps by design (cuBLAS's workspace): before the check
    _, warm = run_in_process(SMALL, QUICK, tmp_path / "warm-up")
    assert warm.passed, warm.reason
    details, check = cuda.check_memory_freed(SMALL.config(QUICK, tmp_path / "run"))
    assert check.passed, (check.reason, details)


def test_the_memory_estimate_is_near_the_peak_on_cuda(tmp_path: Path) -> None:
    details, check = cuda.check_memory_estimate(SMALL.config(QUICK, tmp_path / "run"))
    assert check.passed, (check.reason, details)


@pytest.mark.parametrize("compile", [False, True])
def test_a_run_on_cuda_learns_in_the_precision_of_the_capability_table(
    tmp_path: Path, compile: bool
) -> None:
    spec = RunSpec("parallel", device="cuda", compile=compile)
    record, check = run_in_process(spec, QUICK, tmp_path)
    assert check.passed, check.reason
    assert record["images_per_s"] > 0 and record["peak_memory_bytes"] > 0
    capability = torch.cuda.get_device_capability(0)
    assert record["precision"] == choose_precision("auto", capability).name
    assert record["tf32"] == tf32_in_effect(True, capability)
    assert cuda.precision_verdict("cuda:0", capability, [record]).passed


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpus_pipelined_and_under_torchrun(tmp_path: Path) -> None:
    record, check = run_in_process(RunSpec("parallel", "cuda", pipeline=True), QUICK, tmp_path)
    assert check.passed, check.reason
    assert record["pipeline_devices"] == ["cuda:0", "cuda:1"]
    record, check = run_torchrun(RunSpec("parallel", "cuda", processes=2), QUICK, tmp_path)
    assert check.passed, check.reason
    assert record["world_size"] == 2
