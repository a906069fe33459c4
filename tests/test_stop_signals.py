"""SIGTERM, SIGINT and SIGHUP end a run as 'stopped' at its next step, resumable: a plain
`workbench run` process, a pipelined one whose whole process group is signalled (as systemd
does), and the panel's run in a real Jupyter kernel that is told to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import tiny

from workbench import run_experiment
from workbench.bench.ddp import descendants
from workbench.events import PROGRESS
from workbench.records import read_metrics
from workbench.training.stop_signals import stop_on_signals

ROOT = Path(__file__).resolve().parents[1]
# 1,024 digits in batches of 32: 32 steps an epoch, 3 epochs per module, 2 modules
FIELDS = dict(dataset="mnist-5k", n_train=1024, n_test=256, batch_size=32, width=8,
              n_modules=2, epochs=3, device="cpu")  # fmt: skip
ROW_NUMBERS = ("module", "split", "global_epoch", "loss", "acc", "top5")


def command(out: Path, **fields) -> list[str]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**FIELDS, **fields}.items()]
    return [sys.executable, "-m", "workbench", "run", *flags, f"--out={out}", "--quiet"]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, as a job under a scheduler
    )  # fmt: skip


def finish(process: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """Exit code and stderr; past `timeout` the group is killed and the test fails."""
    try:
        _, err = process.communicate(timeout=timeout)
        return process.returncode, err
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"the run did not end within {timeout} s")


def mid_epoch(out: Path, process: subprocess.Popen, epochs: int = 1) -> None:
    """Wait until `epochs` epochs are recorded and the next one is under way."""
    deadline = time.monotonic() + 120
    while len({r["global_epoch"] for r in read_metrics(out)}) < epochs:
        assert process.poll() is None, "the run ended before it was signalled"
        assert time.monotonic() < deadline, f"{epochs} epoch(s) not recorded within 120 s"
        time.sleep(0.02)
    time.sleep(0.3)  # a few steps into the next epoch


def numbers(out: Path) -> list[dict]:
    return [{k: row.get(k) for k in ROW_NUMBERS} for row in read_metrics(out)]


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_sigterm_mid_epoch_stops_a_run_that_the_same_command_resumes_unbroken(tmp_path):
    """What a scheduler's time limit does: the run ends 'stopped' within seconds, exit code 1
    as for Ctrl-C, whole epochs recorded; rerun, it ends with the rows of a run never
    stopped."""
    out = tmp_path / "run"
    process = start(command(out), tmp_path)
    mid_epoch(out, process)
    signalled = time.monotonic()
    os.kill(process.pid, signal.SIGTERM)
    code, err = finish(process, timeout=60)
    assert time.monotonic() - signalled < 10, "the run took over 10 s to stop"
    assert code == 1, err
    assert "stopped by SIGTERM" in err and "the same command resumes it" in err, err
    assert "Traceback" not in err
    summary = summary_of(out)
    assert summary["status"] == "stopped" and summary["stopped_by"] == "SIGTERM"
    stopped_rows = numbers(out)
    assert 0 < len(stopped_rows) < 2 * 3 * 2  # whole epochs, not all of them
    assert len(stopped_rows) % 2 == 0  # each recorded epoch has its train and test row

    code, err = finish(start(command(out), tmp_path), timeout=180)
    assert code == 0, err
    resumed = summary_of(out)
    assert resumed["status"] == "finished" and resumed["resumed_from"] is not None
    unbroken = tmp_path / "unbroken"
    code, err = finish(start(command(unbroken), tmp_path), timeout=180)
    assert code == 0, err
    assert numbers(out) == numbers(unbroken)  # bit for bit, as if never stopped
    assert numbers(out)[: len(stopped_rows)] == stopped_rows
    assert resumed["per_module_test_acc"] == summary_of(unbroken)["per_module_test_acc"]
    assert min(resumed["per_module_test_acc"]) > 0.5  # it learned: chance is 0.1


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGINT])
def test_sighup_and_sigint_stop_a_run_the_same_way(tmp_path, signum):
    """A closed terminal (SIGHUP) and Ctrl-C (SIGINT) end the run at its next step too."""
    out = tmp_path / "run"
    process = start(command(out, epochs=4), tmp_path)
    mid_epoch(out, process)
    os.kill(process.pid, signum)
    code, err = finish(process, timeout=60)
    assert code == 1 and f"stopped by {signum.name}" in err, err
    summary = summary_of(out)
    assert summary["status"] == "stopped" and summary["stopped_by"] == signum.name
    assert len(read_metrics(out)) < 2 * 4 * 2


def test_a_pipelined_run_whose_process_group_is_signalled_stops_with_its_workers(tmp_path):
    """systemd signals a service's every process: the module workers leave stopping to the
    main process, which stops them; the run ends 'stopped' and no process is left."""
    out = tmp_path / "run"
    fields = dict(method="parallel", pipeline="true", epochs=4)
    process = start(command(out, **fields), tmp_path)
    mid_epoch(out, process)
    workers = descendants(process.pid)
    assert workers, "the pipelined run has no worker processes"
    os.killpg(process.pid, signal.SIGTERM)
    code, err = finish(process, timeout=60)
    assert code == 1 and "stopped by SIGTERM" in err, err
    assert "worker" not in err  # no worker died of the signal: the run did not fail
    assert summary_of(out)["status"] == "stopped"
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived its run"
        time.sleep(0.1)


def test_a_kernel_told_to_end_stops_the_panels_run_first(tmp_path):
    """A real ipykernel running the panel's training thread gets SIGTERM (a server shutting
    down, a job's time limit): the run ends 'stopped', then the kernel ends as asked."""
    from jupyter_client.manager import start_new_kernel

    out = tmp_path / "run"
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    try:
        code = (
            f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "from workbench.ui import WorkbenchPanel\n"
            f"panel = WorkbenchPanel(**{dict(FIELDS, epochs=20)!r}, out={str(out)!r})\n"
            "panel.start()\n"
        )
        reply = client.execute_interactive(code, timeout=60)
        assert reply["content"]["status"] == "ok", reply["content"]
        deadline = time.monotonic() + 120
        while not read_metrics(out):
            assert time.monotonic() < deadline, "the panel's run recorded no epoch in 120 s"
            time.sleep(0.05)
        kernel = manager.provisioner.process
        os.kill(kernel.pid, signal.SIGTERM)
        kernel.wait(timeout=60)  # it still ends
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    summary = summary_of(out)
    assert summary["status"] == "stopped", summary
    assert summary["epochs_done"] < 2 * 20


def test_the_first_signal_asks_the_second_interrupts_and_the_handlers_are_put_back():
    stop = threading.Event()
    before = signal.getsignal(signal.SIGHUP)
    with stop_on_signals(stop) as received:
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.05)  # Python runs the handler between bytecodes of the main thread
        assert stop.is_set() and received == [signal.SIGHUP]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert signal.getsignal(signal.SIGHUP) is before


def test_a_signal_during_training_in_process_ends_the_run_stopped_by_it(tmp_path):
    """run_experiment in a notebook cell or script (the main thread): a signal that arrives
    during a step stops the run at the next one and names itself in the summary."""

    def hang_up_once(event, info):  # after the first step (PROGRESS comes then)
        if event == PROGRESS and info["global_epoch"] == 1 and not sent:
            sent.append(os.kill(os.getpid(), signal.SIGHUP))

    sent: list = []

    config = tiny(tmp_path, epochs=3, n_train=512, batch_size=32)
    before = signal.getsignal(signal.SIGHUP)
    summary = run_experiment(config, callbacks=[hang_up_once])
    assert summary["status"] == "stopped" and summary["stopped_by"] == "SIGHUP"
    assert read_metrics(tmp_path / "run") == []  # stopped in the first epoch: nothing recorded
    assert signal.getsignal(signal.SIGHUP) is before  # put back after the run
