"""Memory checked before training, and an allocation that fails during training: the estimate
against the bench's measurement, a config over a real address-space limit refused before
training, and real allocator failures ending the run as failed in one line."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import tiny

from workbench import Config, run_experiment
from workbench.bench.memory import training_peak_bytes
from workbench.events import RUN_START, describe_estimate
from workbench.memory import cgroup_room
from workbench.records import RunFailed, read_metrics
from workbench.training.memory_estimate import (
    MemoryRefused,
    bytes_asked,
    estimate_memory,
    is_out_of_memory,
)

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
BIG = ["--width=1024", "--n-modules=3", "--batch-size=512"]  # the case: about 6 GiB


@pytest.mark.parametrize(
    "fields",
    [
        dict(arch="resnet", n_units=6, width=16, n_modules=3, method="parallel"),
        dict(arch="resnet", n_units=6, width=16, n_modules=3, method="end-to-end"),
        dict(width=128, n_modules=3, batch_size=256, method="sequential"),
        dict(
            arch="resnet",
            n_units=6,
            width=16,
            n_modules=2,
            method="parallel",
            objective="predsim",
            optimizer="adam",
        ),
    ],  # fmt: skip
)
def test_the_estimate_of_training_memory_is_near_the_bench_measurement(fields):
    """The steps' part of the estimate (gradients, optimizer state, activations) against the
    bytes the same steps allocate, counted by the bench: within 20%."""
    config = Config(**{"dataset": "mnist-5k", "n_train": 512, "n_test": 128, "device": "cpu",
                       "batch_size": 128, **fields})  # fmt: skip
    estimate = estimate_memory(config, 10, CPU, n_train=512, n_test=128)
    measured = training_peak_bytes(config)
    assert 0.8 < estimate.training / measured < 1.2, (estimate, measured)


def test_the_estimate_grows_with_the_batch_and_counts_adams_two_moments():
    base = Config(dataset="mnist-5k", width=32, n_modules=3, device="cpu")
    small, big = (estimate_memory(base.replace(batch_size=b), 10, CPU, 5000, 0) for b in (64, 256))
    assert 3.5 * small.steps < big.steps < 4 * small.steps  # activations x 4, gradients not
    assert big.weights == small.weights
    adam = estimate_memory(base.replace(optimizer="adam", weight_decay=0.0), 10, CPU, 5000, 0)
    sgd = estimate_memory(base.replace(momentum=0.0), 10, CPU, 5000, 0)
    # SGD's momentum, Adam's two moments, plain SGD's nothing: of every trained parameter
    assert adam.optimizer_state == 2 * small.optimizer_state > 0 == sgd.optimizer_state


def limited(limit_bytes: int):
    """A child process's address-space limit (`ulimit -v`), set before it starts Python."""
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


def run_cli(args: list[str], cwd: Path, limit: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "workbench", "run", *args, "--quiet"]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=limited(limit),
    )  # fmt: skip


@pytest.fixture(scope="module")
def address_space_limit() -> int:
    """2 GiB above what a process holds once torch and the workbench are imported: enough to
    train small configs, not the issue's ~6 GiB one."""
    probe = "import workbench.training; print(open('/proc/self/status').read())"
    status = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    ).stdout
    size = next(int(line.split()[1]) * 1024 for line in status.splitlines()
                if line.startswith("VmSize:"))  # fmt: skip
    return size + 2 * 2**30


def test_a_config_over_the_memory_limit_is_refused_before_training(tmp_path, address_space_limit):
    out = tmp_path / "run"
    done = run_cli([*BIG, f"--out={out}"], tmp_path, address_space_limit)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()  # one line
    assert line.startswith("workbench: error: memory: batch_size 512 with width 1024 needs about")
    assert "GiB at its peak" in line and "available on cpu" in line and "--yes" in line
    assert not out.exists()  # refused before anything was written

    small = run_cli(["--n-train=512", "--n-test=128", "--epochs=1", f"--out={out}"], tmp_path,
                    address_space_limit)  # fmt: skip
    assert small.returncode == 0, small.stderr  # the same limit lets a small run train
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["memory_estimate_bytes"] < summary["memory_available_bytes"] + 2**32
    assert summary["memory_available_bytes"] < 2 * 2**30  # the limit, not the machine's RAM


def test_with_yes_a_real_allocation_failure_ends_the_run_failed_in_one_line(
    tmp_path, address_space_limit
):
    out = tmp_path / "run"
    done = run_cli([*BIG, f"--out={out}", "--yes"], tmp_path, address_space_limit)
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("workbench: error: out of memory: module 1, epoch 1: ")
    assert "could not be allocated on cpu (estimated peak" in line, line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("OutOfMemory: ")


def test_an_allocation_failing_in_module_2_keeps_module_1s_records(tmp_path, trainers):
    """A real allocator failure (a 1 TiB tensor) inside module 2's forward, in its first
    training step: failed, naming module 2 and the bytes asked; module 1's rows stay."""

    def fail_in_module_2(event, info):
        if event == RUN_START:
            (trainer,) = trainers
            trainer.model.trunk[1].register_forward_hook(
                lambda *_: torch.empty(2**40, dtype=torch.uint8)
            )

    config = tiny(tmp_path, n_modules=2, epochs=2)
    with pytest.raises(RunFailed) as error:
        run_experiment(config, callbacks=[fail_in_module_2])
    message = str(error.value)
    assert message.startswith("out of memory: module 2, epoch 1: 1024.0 GiB could not be "
                              "allocated on cpu (estimated peak "), message  # fmt: skip
    assert "\n" not in message
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["per_module_test_acc"]  # module 1's
    assert {r["module"] for r in read_metrics(tmp_path / "run")} == {1}


def test_out_of_memory_errors_are_recognized_and_their_sizes_read():
    cuda = torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB"
    )
    assert is_out_of_memory(cuda) and bytes_asked(cuda) == 2 * 2**30
    cpu = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
        "you tried to allocate 536870912 bytes. Error code 12 (Cannot allocate memory)"
    )
    assert is_out_of_memory(cpu) and bytes_asked(cpu) == 2**29
    assert is_out_of_memory(MemoryError()) and bytes_asked(MemoryError()) is None
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_the_estimate_is_printed_with_the_time_estimate():
    line = describe_estimate(
        {
            "seconds": 120,
            "epochs_left": 3,
            "images_per_s": 900.0,
            "device": "cpu",
            "memory_bytes": 3 * 2**30,
            "memory_held_bytes": 2**30,
            "memory_available_bytes": 7 * 2**30,
        }
    )
    assert line.endswith("; peak memory about 3.0 GiB of 8.0 GiB")


@contextlib.contextmanager
def address_space_of_this_process(room: int) -> Iterator[None]:
    """This process's address-space limit set `room` bytes above what it maps now (a real
    `ulimit -v`, lowered for the test's length and put back)."""
    before = resource.getrlimit(resource.RLIMIT_AS)
    mapped = int(next(line.split()[1] for line in open("/proc/self/status")
                      if line.startswith("VmSize:"))) * 1024  # fmt: skip
    resource.setrlimit(resource.RLIMIT_AS, (mapped + room, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, before)


WIDE = dict(width=512, n_modules=2, n_train=512, batch_size=512)  # about 3 GiB of activations


def test_a_refusal_is_raised_before_training_from_python_and_check_memory_lifts_it(tmp_path):
    """run_experiment refuses the same way (MemoryRefused, a ConfigError) before it writes
    anything; check_memory=False tries, and the allocation that fails ends it as failed."""
    config = tiny(tmp_path, **WIDE)
    with address_space_of_this_process(2**30):
        with pytest.raises(MemoryRefused, match=r"^memory: batch_size 512 with width 512 needs"):
            run_experiment(config)
        assert not (tmp_path / "run").exists()
        with pytest.raises(RunFailed, match=r"^out of memory: module 1, epoch 1: "):
            run_experiment(config, check_memory=False)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


def test_the_panel_shows_the_refusal_and_a_second_start_tries_anyway(tmp_path):
    from workbench.ui import WorkbenchPanel

    panel = WorkbenchPanel(runs_root=str(tmp_path / "runs"), dataset="mnist-5k", n_test=128,
                           device="cpu", **WIDE)  # fmt: skip
    with address_space_of_this_process(2**30):
        for attempt in range(2):
            panel.start()
            panel.thread.join(timeout=120)
            if attempt == 0:
                assert "memory: batch_size 512" in panel.message.value
                assert "Start</b> again to try anyway" in panel.message.value
                assert not (tmp_path / "runs").exists()
    assert "out of memory: module 1, epoch 1" in panel.message.value  # it tried


def test_a_pipelined_workers_allocation_failure_is_the_same_one_line(tmp_path, address_space_limit):
    """Each module's worker process trains under the same limit: the one that cannot allocate
    reports the out-of-memory line, naming itself, and the run ends failed."""
    out = tmp_path / "run"
    args = ["--width=512", "--n-modules=2", "--n-train=512", "--n-test=128", "--batch-size=512",
            "--method=parallel", "--pipeline=true", f"--out={out}", "--yes"]  # fmt: skip
    done = run_cli(args, tmp_path, address_space_limit)
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert re.match(
        r"workbench: error: pipeline: module (\d)'s worker failed: out of memory: module \1, "
        r"epoch 1: \d+ MiB could not be allocated on cpu; allowed: ",
        last,
    ), last
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


def test_a_cgroup_limit_counts_what_the_kernel_cannot_reclaim(tmp_path):
    """cgroup v2 (a SLURM job's own cgroup under the root), v1 (a container's root), and no
    limit: the room is the limit less the usage, the inactive page cache not counted."""
    job = tmp_path / "v2" / "system.slice" / "job_7"
    job.mkdir(parents=True)
    (job / "memory.max").write_text(f"{8 * 2**30}\n")
    (job / "memory.current").write_text(f"{6 * 2**30}\n")
    (job / "memory.stat").write_text(f"anon 123\ninactive_file {3 * 2**30}\nactive_file 9\n")
    (tmp_path / "v2" / "memory.max").write_text("max\n")  # the root: no limit
    (tmp_path / "v2" / "memory.current").write_text("1\n")
    own = {"v2": "/system.slice/job_7"}
    assert cgroup_room(tmp_path / "v2", own) == [5 * 2**30]  # 8 - (6 - 3) GiB
    assert cgroup_room(tmp_path / "v2", {"v2": "/"}) == []  # the root's "max": no limit

    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(f"{4 * 2**30}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{3 * 2**30}\n")
    (v1 / "memory.stat").write_text(f"total_inactive_file {2**30}\n")
    assert cgroup_room(tmp_path / "v1", {"memory": "/docker/abc"}) == [2 * 2**30]
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "unlimited"
    assert cgroup_room(tmp_path / "v1", {}) == []
    assert cgroup_room(tmp_path / "none", {}) == []
