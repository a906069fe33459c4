"""One run across two torchrun processes (gloo on the CPU, one thread each, on 127.0.0.1),
against the same run in one process.

Tolerances. Without BatchNorm (batchnorm false) the two runs compute the same thing in exact
arithmetic: each rank trains on its slice of the very batch one process draws (same order,
same augmentation), and the slices' mean gradients are summed weighted by the slices' sizes
(an odd batch size makes the slices unequal, 16 and 15 images), which is the whole batch's
mean gradient. What differs is the order of floating-point sums (gloo's all-reduce,
convolutions over 15 images instead of 31). Module 1 (the sequential run's first) is
insensitive to it: its losses measured within 4e-7 (relative) of one process's and its test
accuracy equal; asserted within 1e-5 and 0.01. Module 2 then trains on module 1's outputs,
and lr 0.2 amplifies their rounding: one process alone, run with 1 thread and with 2, differs
by up to 1.2e-2 in module 2's losses and 0.025 in its accuracy (2 processes against 1 process
were within that); asserted within 5e-2 and 0.05. Measured against the same single run, these
fail: ranks without the all-reduce (module 1's losses off by 1e-2 to 0.3, module 2's by up to
1.2), summed instead of averaged gradients (up to 2), and DDP's plain mean of the unequal
slices (module 1's losses off by 2.5e-4 to 1.9e-3). With BatchNorm each rank would normalize
with its own slice's statistics, a real difference this test avoids.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_folders import config as folder_config
from test_folders import make_imagefolder

from workbench import Config, run_experiment
from workbench.bench.ddp import descendants
from workbench.data import make_batches
from workbench.data.folders import StreamedBatches
from workbench.records import read_metrics

TORCHRUN = Path(sys.executable).parent / "torchrun"
ROOT = Path(__file__).resolve().parents[1]
FIELDS = dict(  # 512 digits in batches of 31: 16 batches split 16 / 15 and a last one of 16
    dataset="mnist-5k",
    n_train=512,
    n_test=200,
    batch_size=31,
    width=16,
    n_modules=2,
    epochs=3,
    lr=0.2,
    init="kaiming",  # without BatchNorm, these learn in 3 epochs
    batchnorm=False,
    device="cpu",
)
# per module: (relative loss, accuracy) that a training or test row may differ by
TOLERANCES = {1: (1e-5, 0.01), 2: (5e-2, 0.05)}  # see the module's docstring


def flags(fields: dict) -> list[str]:
    return [a for k, v in fields.items() for a in (f"--{k.replace('_', '-')}", str(v).lower())]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(fields: dict, cwd: Path) -> subprocess.Popen:
    """`torchrun --nproc-per-node 2 -m workbench run ...` on 127.0.0.1, one thread a process."""
    command = [
        str(TORCHRUN),
        "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1",
        "--master-port", str(free_port()),
        "-m", "workbench", "run", "--quiet", *flags(fields),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """The exit code and output of `process`; past `timeout` seconds it and its workers are
    killed (SIGTERM, then SIGKILL 10 s later) and the test fails."""
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output
    except subprocess.TimeoutExpired:
        workers = descendants(process.pid)
        process.terminate()  # torchrun forwards it to its workers
        try:
            output, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            output = ""
        for pid in [process.pid, *workers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait()
        pytest.fail(f"torchrun ran past {timeout} s; output:\n{output[-3000:]}")


def summary_of(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run in this one process, with one thread like each torchrun process: its folder."""
    folder = tmp_path_factory.mktemp("single") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run_experiment(Config(**FIELDS, out=str(folder)))
    finally:
        torch.set_num_threads(threads)
    assert summary["world_size"] == 1 and min(summary["per_module_test_acc"]) > 0.5  # learned
    return folder


def close_to_single(folder: Path, single: Path) -> None:
    """The torchrun run in `folder` trained as the single process did, within tolerances."""
    rows, single_rows = read_metrics(folder), read_metrics(single)
    assert len(rows) == len(single_rows) == 2 * 3 * 2  # modules x epochs x (train, test)
    for row, one in zip(rows, single_rows):
        loss, acc = TOLERANCES[row["module"]]
        assert abs(row["loss"] - one["loss"]) <= loss * one["loss"], (row, one)
        assert abs(row["acc"] - one["acc"]) <= acc, (row, one)
    accs = summary_of(folder)["per_module_test_acc"]
    assert accs == [r["acc"] for r in rows if r["split"] == "test" and r["epoch"] == 3]


def test_two_processes_train_as_one_stop_together_and_resume(tmp_path: Path, single: Path):
    """One run in 2 processes: rank 0 names the folder for both, a signal to rank 0 alone stops
    both at the same step, the same command resumes, and it trains as one process did."""
    process = torchrun(FIELDS, tmp_path)  # no --out: rank 0 picks runs/<time>-...
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("runs/*/metrics.jsonl")) and process.poll() is None:
            assert time.monotonic() < deadline, "no epoch recorded within 60 s"
            time.sleep(0.05)
        (folder,) = (tmp_path / "runs").iterdir()  # one run folder: the ranks agreed on it
        while not read_metrics(folder) and process.poll() is None:
            time.sleep(0.05)
        # rank 0 alone holds the folder's lock: the signal reaches no other rank
        rank0 = json.loads((folder / ".lock").read_text())["pid"]
        os.kill(rank0, signal.SIGTERM)
    finally:
        code, output = finish(process, timeout=60)
    summary = summary_of(folder)
    assert summary["status"] == "stopped" and summary["world_size"] == 2, output[-3000:]
    assert "workbench/training" not in output  # no rank failed with a traceback: both stopped
    assert 0 < len(read_metrics(folder)) < 2 * 3 * 2  # whole epochs only, and not all of them

    code, output = finish(torchrun({**FIELDS, "out": str(folder)}, tmp_path), timeout=90)
    assert code == 0, output[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]
    assert list((tmp_path / "runs").iterdir()) == [folder]  # and no rank wrote another
    assert output.count("module  test acc") == 1  # rank 0 alone prints the results
    summary = summary_of(folder)
    assert summary["status"] == "finished" and summary["resumed_from"] is not None
    assert summary["world_size"] == 2
    close_to_single(folder, single)  # as if never stopped
    for row in read_metrics(folder):
        if row["split"] == "train":  # each rank trained on its slices only: 16 x 16 + 8 and
            assert row["rank_images"] == [264, 248]  # 16 x 15 + 8 of the 512 images


@pytest.mark.parametrize("objective", ["infopro-contrast", "predsim"])
def test_infopro_and_predsim_train_across_two_processes(tmp_path: Path, objective: str):
    """Each rank hands its objective its slice of the batch, images included (InfoPro's
    decoder reads them), on a residual trunk."""
    fields = dict(dataset="mnist-5k", n_train=512, n_test=200, batch_size=32, arch="resnet",
                  n_units=3, width=8, n_modules=2, epochs=6, method="parallel",
                  objective=objective, device="cpu", out=str(tmp_path / "run"))  # fmt: skip
    if objective == "predsim":  # its recipe's optimizer
        fields.update(optimizer="adam", lr=0.01, weight_decay=0.0)
    code, output = finish(torchrun(fields, tmp_path), timeout=120)
    assert code == 0, output[-3000:]
    summary = summary_of(tmp_path / "run")
    assert summary["status"] == "finished" and summary["world_size"] == 2
    assert summary["final_test_acc"] > 0.3, summary["per_module_test_acc"]  # chance: 0.1


def test_streamed_batches_read_each_ranks_slice_of_the_same_batches(tmp_path: Path) -> None:
    """The workers of rank r read the r-th slice of each batch one process would read, with
    the same augmentation (each image's crop is seeded by its index, not by its batch)."""
    from workbench.data import load_data

    c = folder_config(make_imagefolder(tmp_path), image_size=16, data_workers=1, batch_size=15)
    data = load_data(c)
    cpu = torch.device("cpu")
    whole, _ = make_batches(data, c, cpu)
    ranks = [make_batches(data, c, cpu)[0] for _ in range(2)]
    for rank, batches in enumerate(ranks):
        assert isinstance(batches, StreamedBatches)
        batches.shard = (rank, 2)
    for (x, y), *slices in zip(whole, *ranks):
        assert [len(s[1]) for s in slices] == [len(y) - len(y) // 2, len(y) // 2]
        assert torch.equal(torch.cat([s[0] for s in slices]), x)
        assert torch.equal(torch.cat([s[1] for s in slices]), y)


def test_bench_only_refuses_an_unknown_section_in_one_line(tmp_path: Path, capsys) -> None:
    from workbench.cli import main

    assert main(["bench", "--quick", "--only", "ddp,nonsense", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("workbench bench: error: only: got 'nonsense'") and err.count("\n") == 1


def test_the_ranks_agree_on_stopping_every_few_steps_not_at_every_one() -> None:
    """The stop flag's all-reduce runs at every STOP_CHECK_STEPS-th step only (over a real gloo
    group, of one process here): a stop set at step 2 is seen by every rank at the next check,
    and stays seen."""
    import threading

    import torch.distributed as dist

    from workbench.training.distributed import Ranks, RankStop

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        ranks = Ranks(0, 1, 0, torch.device("cpu"), "gloo", dist.group.WORLD)
        local = threading.Event()
        stop = RankStop(local, ranks, every=4)
        seen = []
        for step in range(1, 8):
            if step == 2:
                local.set()
            seen.append(stop.is_set())
        assert seen == [False, False, False, False, True, True, True]  # checks at steps 1, 5
    finally:
        dist.destroy_process_group()
