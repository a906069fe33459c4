"""Faults injected from outside, as a careful user or an attacker would: crafted files, two
writers, divergence, kill -9 at chosen moments, full and read-only disks, closed pipes.

Every process a test starts runs with a timeout and is killed in a `finally`.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny

from workbench import run_experiment
from workbench.batch.sweep import SweepError, expand_grid, load_grid, run_sweep
from workbench.config import Config, ConfigError
from workbench.data import DataError, load_data, read_cifar_batch
from workbench.events import MODULE_DONE
from workbench.models import build_model
from workbench.records import CheckpointError, RunDir, RunLock, atomic_write_json, read_metrics
from workbench.training import Trainer

BIN = Path(sys.executable).parent
WORKBENCH = str(BIN / "workbench")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # a shared 2-core machine: one thread each
TINY = {"n_train": 256, "n_test": 128, "epochs": 1, "batch_size": 64, "width": 8, "device": "cpu"}


def flags(**fields: object) -> list[str]:
    values = {**TINY, **fields}
    return [a for k, v in values.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def workbench(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [WORKBENCH, *args, "--quiet"] if args[0] == "run" else [WORKBENCH, *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one error line on stderr (and no traceback)."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def strict_rows(run: Path) -> list[dict]:
    """metrics.jsonl read as strict JSON (JavaScript's and jq's reading: no NaN, no Infinity)."""

    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    text = (run / "metrics.jsonl").read_text()
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


# A workbench run that kills itself (SIGKILL, no clean-up) right after writing the checkpoint
# named in WB_KILL_AFTER: `module_1.pt`, or `last.pt:P` (last.pt at the end of phase P, whose
# epochs are 1), or several such names joined by `|`: whichever is written first.
KILLED_AFTER = """
import os, signal, sys
from workbench.cli import main
from workbench.records import RunDir

wanted = [w.partition(":") for w in os.environ["WB_KILL_AFTER"].split("|")]
save = RunDir.save_checkpoint

def save_then_die(self, file, state):
    save(self, file, state)
    at = (state.get("phase"), state.get("epochs_done"))
    if any(file == name and (not phase or at == (int(phase), 1)) for name, _, phase in wanted):
        os.kill(os.getpid(), signal.SIGKILL)

RunDir.save_checkpoint = save_then_die
sys.exit(main(sys.argv[1:]))
"""


def run_killed_after(checkpoint: str, out: Path, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER, "run", *args, "--quiet", "--out", str(out)],
        env={**ENV, "WB_KILL_AFTER": checkpoint},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], dict]:
    """Summaries of uninterrupted CLI runs with n modules, made once each."""
    root, made = tmp_path_factory.mktemp("unbroken"), {}

    def get(n_modules: int) -> dict:
        if n_modules not in made:
            result = workbench("run", *flags(n_modules=n_modules), "--out", "u", cwd=root)
            assert result.returncode == 0, result.stderr[-3000:]
            made[n_modules] = summary(root / "u")
            shutil.rmtree(root / "u")
        return made[n_modules]

    return get


# -- 1. loading never runs code ----------------------------------------------------------------
class Payload:
    """Unpickling this creates the file `path`: what a crafted file would do, harmlessly."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.path,))


def test_crafted_last_checkpoint_is_refused_without_running_it(tmp_path):
    run, marker = tmp_path / "run", tmp_path / "created-by-the-checkpoint"
    stop = threading.Event()

    def stop_after_module_1(event: str, info: dict) -> None:
        if event == MODULE_DONE:
            stop.set()

    config = tiny(tmp_path, n_modules=2)
    assert run_experiment(config, [stop_after_module_1], stop)["status"] == "stopped"
    last = run / "checkpoints" / "last.pt"
    torch.save({"phase": 0, "model": Payload(marker)}, last)
    torch.load(last, weights_only=False)  # the old loader: the file runs its code
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointError, match="objects other than tensors") as err:
        RunDir(run, config).load_checkpoint("last.pt")
    assert "\n" not in str(err.value) and not marker.exists()
    # resuming falls back to module 1's checkpoint, says so, and never runs the payload
    result = workbench("run", *flags(n_modules=2), "--out", str(run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not marker.exists()
    said = [line for line in result.stderr.splitlines() if "was unreadable" in line]
    assert len(said) == 1 and "refused, not run" in said[0], result.stderr
    assert "resumed from the module checkpoints after module 1" in summary(run)["recovered"]
    assert summary(run)["status"] == "finished"


def write_cifar10(root: Path, first_batch: bytes | None = None) -> Path:
    """A tiny copy in torchvision's CIFAR-10 layout (py3 pickles), `first_batch` as given."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    gen = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": gen.integers(0, 256, (20, 3072), np.uint8), "labels": [0, 1] * 10}
        (folder / name).write_bytes(pickle.dumps(batch))
    if first_batch is not None:
        (folder / "data_batch_1").write_bytes(first_batch)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list("abcdefghij")}))
    return folder


def test_crafted_cifar_batch_is_refused_in_one_line(tmp_path):
    marker = tmp_path / "created-by-the-batch"
    crafted = pickle.dumps({"data": Payload(marker), "labels": [0]})
    folder = write_cifar10(tmp_path / "data", crafted)
    pickle.loads(crafted)  # the old reader (pickle.load): the file runs its code
    assert marker.exists()
    marker.unlink()

    config = Config(dataset="cifar10", data_dir=str(tmp_path / "data"), allow_modified_copy=True)
    with pytest.raises(DataError, match=r"^dataset: .*data_batch_1 is refused as corrupt") as err:
        load_data(config)
    assert "pathlib.Path.touch" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    result = workbench(
        "run", "--dataset", "cifar10", "--data-dir", "data", "--allow-modified-copy", "true",
        "--out", "run", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2 and not marker.exists()
    assert "refused as corrupt" in error_line(result)
    # the honest layout still reads (numpy arrays via the allowed globals), protocol 2 to 5
    for protocol in (2, 5):
        batch = {"data": np.arange(3072 * 2, dtype=np.uint8).reshape(2, 3072), "labels": [3, 4]}
        (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=protocol))
        assert np.array_equal(read_cifar_batch(folder / "data_batch_1")["data"], batch["data"])


def test_real_cifar_copy_reads_as_pickle_does(shared_data, tmp_path):
    """The JPEG copy's batch files (Python 2 pickles) read exactly as pickle.load reads them."""
    pack = shared_data / "cifar10-jpeg"
    if not (pack / "unpack.py").exists():
        pytest.skip(f"no CIFAR-10 copy at {pack}")
    subprocess.run(
        [sys.executable, str(pack / "unpack.py"), str(tmp_path)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(path, "rb") as f:
        trusted = pickle.load(f, encoding="latin1")
    ours = read_cifar_batch(path)
    assert ours.keys() == trusted.keys() and ours["labels"] == trusted["labels"]
    assert ours["data"].dtype == np.uint8 and np.array_equal(ours["data"], trusted["data"])


# -- 2. one writer per run folder --------------------------------------------------------------
def test_a_second_run_on_a_busy_folder_is_refused_and_kill_9_leaves_no_lock(tmp_path):
    args = flags(n_modules=1, epochs=500)  # minutes: it is killed long before
    first = subprocess.Popen(
        [WORKBENCH, "run", *args, "--quiet", "--out", "run"],
        cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    run = tmp_path / "run"
    try:
        deadline = time.monotonic() + 60
        while not (run / "metrics.jsonl").exists():  # it trains: holds the lock, writes rows
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.2)
        config_before = (run / "config.json").stat().st_mtime_ns
        second = workbench("run", *args, "--out", "run", cwd=tmp_path)
        assert second.returncode == 2
        line = error_line(second)
        assert f"a folder another run is writing (pid {first.pid} on " in line
        assert (run / "config.json").stat().st_mtime_ns == config_before  # nothing touched
        first.kill()  # kill -9: the OS drops the lock with the process
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
        first.stderr.close()
    config = Config.from_dict({**TINY, "n_modules": 1, "epochs": 500, "out": str(run)})
    with RunDir.open(config):  # free again
        pass
    rows = strict_rows(run)
    assert len({(r["global_epoch"], r["split"]) for r in rows}) == len(rows)  # no row twice


# -- 3. divergence stops the run ---------------------------------------------------------------
def test_lr_1000_diverges_and_fails_naming_module_epoch_and_step(tmp_path):
    args = flags(n_modules=2, n_train=512, lr=1000)
    result = workbench("run", *args, "--out", "run", cwd=tmp_path)
    assert result.returncode == 1
    line = error_line(result)
    assert line.startswith("workbench: error: training diverged: module 1's loss is NaN or ")
    assert "at epoch 1, step " in line and " of 8 (lr 1000)" in line
    on_disk = summary(tmp_path / "run")
    assert on_disk["status"] == "failed" and "training diverged" in on_disk["error"]
    rows = strict_rows(tmp_path / "run")  # strict JSON: the diverged loss is null
    assert [(r["module"], r["split"], r["loss"]) for r in rows] == [(1, "train", None)]
    # the folder keeps its records; the same command diverges again, in the same place
    again = workbench("run", *args, "--out", "run", cwd=tmp_path)
    assert again.returncode == 1 and error_line(again) == line


HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy")


@pytest.mark.parametrize("method", ["sequential", "parallel", "end-to-end"])
def test_the_checks_read_the_device_once_per_epoch_not_per_step(tmp_path, method):
    """On CUDA each host read waits for the device: the finiteness checks (and the time
    estimate) may not add one per step. Counted as calls reading a tensor on the host."""
    reads: list[str] = []
    for n_train in (128, 512):  # 2 and 8 steps
        config = tiny(tmp_path, n_train=n_train, method=method, n_modules=2)
        cpu = torch.device("cpu")
        trainer = Trainer(
            config, RunDir(tmp_path, config), build_model(config), load_data(config), cpu,
            callbacks=[lambda event, info: None],  # someone listens: the estimate is made too
        )  # fmt: skip
        phase = trainer.phases[0]
        with pytest.MonkeyPatch.context() as patch:
            for name in HOST_READS:
                original = getattr(torch.Tensor, name)

                def counting(self, *args, _original=original, _name=name, **kwargs):
                    reads.append(_name)
                    return _original(self, *args, **kwargs)

                patch.setattr(torch.Tensor, name, counting)
            totals = trainer.train_pass(phase, 0)[0]
            assert trainer.check_finite(phase, 0, totals) is None
        reads.append("end of pass")
    cut = reads.index("end of pass")
    two_steps, eight_steps = reads[:cut], reads[cut + 1 : -1]
    assert two_steps == eight_steps and len(two_steps) <= 4  # stats, flags, parameters


# -- 4. nothing lost on resume -----------------------------------------------------------------
@pytest.mark.parametrize("lose", ["kill between the two writes", "module checkpoint deleted"])
def test_every_finished_modules_checkpoint_survives_a_kill(tmp_path, unbroken, lose):
    run = tmp_path / "run"
    if lose == "kill between the two writes":
        # after whichever of module 1's checkpoint and the resume point past it comes first
        run_killed_after("module_1.pt|last.pt:0", run, *flags(n_modules=2))
    else:  # a folder from a version that wrote last.pt first, killed in between
        run_killed_after("last.pt:0", run, *flags(n_modules=2))
        (run / "checkpoints" / "module_1.pt").unlink()
    (run / "checkpoints" / ".last.pt.0123abcd.tmp").write_bytes(b"an interrupted write")
    (run / ".metrics.jsonl.89abcdef.tmp").write_bytes(b"another")
    result = workbench("run", *flags(n_modules=2), "--out", str(run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary(run)["status"] == "finished"
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == ["last.pt", "module_1.pt", "module_2.pt"]  # no temp file left either
    assert not list(run.glob(".*.tmp"))
    assert summary(run)["per_module_test_acc"] == unbroken(2)["per_module_test_acc"]


def test_summary_says_a_module_finished_when_it_does(tmp_path):
    seen: list[int] = []

    def on_module_done(event, info):
        if event == MODULE_DONE:
            seen.append(summary(tmp_path / "run")["modules_finished"])

    run_experiment(tiny(tmp_path, n_modules=3), callbacks=[on_module_done])
    assert seen == [1, 2, 3]


def test_truncated_last_checkpoint_falls_back_to_the_module_checkpoints(tmp_path, unbroken):
    run = tmp_path / "run"
    run_killed_after("last.pt:1", run, *flags(n_modules=3))  # after module 2
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    result = workbench("run", *flags(n_modules=3), "--out", str(run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    said = [line for line in result.stderr.splitlines() if "was unreadable" in line]
    assert len(said) == 1 and "resumed from the module checkpoints after module 2" in said[0]
    assert summary(run)["resumed_from"] == {"phase": 2, "epochs_done": 0}
    # modules 1-2 from their checkpoints, module 3 trained as an unbroken run trains it
    assert summary(run)["per_module_test_acc"] == unbroken(3)["per_module_test_acc"]
    assert (run / "checkpoints" / "last.pt.unreadable").exists()


def test_truncated_last_checkpoint_mid_lap_is_one_line_saying_what_to_do(tmp_path):
    run = tmp_path / "run"
    args = flags(n_modules=2, method="multilap", laps=2, epochs=2)
    run_killed_after("last.pt:1", run, *args)  # lap 1 done: no module finished for good
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    result = workbench("run", *args, "--out", str(run), cwd=tmp_path)
    assert result.returncode == 2
    line = error_line(result)
    assert "got an unreadable" in line and "last.pt (truncated or corrupt: " in line
    assert line.endswith("allowed: delete that file to train this run again from its start, "
                         "or delete the run folder")  # fmt: skip
    assert summary(run)["status"] == "failed"
    last.unlink()  # as the line says: the run starts again and finishes
    assert workbench("run", *args, "--out", str(run), cwd=tmp_path).returncode == 0


# -- 5. a dying sweep takes its workers with it ------------------------------------------------
def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every process, from /proc (Linux)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(stat.parent.name)] = (int(fields[1]), fields[19])  # ppid, starttime
    return table


def family(pid: int) -> dict[int, str]:
    """pid's descendants and their start times (so a reused pid is never mistaken for one)."""
    table, found, todo = process_table(), {}, [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, start) in table.items():
            if ppid == parent:
                found[child] = start
                todo.append(child)
    return found


def still_running(processes: dict[int, str]) -> list[int]:
    """Those of `processes` alive and the same processes (a zombie has ended: only its reaping
    by init is left)."""
    alive = []
    for pid, start in processes.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and fields[19] == start:
            alive.append(pid)
    return alive


SLOW_POINTS = """
fixed: {n_train: 256, n_test: 128, epochs: 500, width: 4, device: cpu, batch_size: 64}
grid: {n_modules: [1, 2]}
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_sweep_killed_with_9_takes_its_workers_and_kernels_along(tmp_path):
    (tmp_path / "g.yaml").write_text(SLOW_POINTS)
    sweep = subprocess.Popen(
        [WORKBENCH, "sweep", "g.yaml", "--out", "out", "--workers", "1", "--quiet"],
        cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    point = tmp_path / "out" / "n_modules-1"
    processes: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 180
        while not (point / "run" / "metrics.jsonl").exists():  # its kernel is training
            assert sweep.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        processes = family(sweep.pid)  # Dask worker, point process, kernel, mp tracker
        assert len(processes) >= 2
        sweep.kill()
        sweep.wait(timeout=30)
        deadline = time.monotonic() + 10  # "within seconds"
        while still_running(processes) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert still_running(processes) == []
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait(timeout=30)
        for pid in still_running(processes):
            os.kill(pid, signal.SIGKILL)
    record = json.loads((point / "point.json").read_text())
    assert record["status"] == "stopped" and "run the sweep again" in record["error"]
    assert summary(point / "run")["status"] == "stopped"  # the run said so before its kernel died
    assert not (tmp_path / "out" / "n_modules-2" / "run").exists()  # the queued point never ran


def test_a_rerun_after_a_dead_sweep_reports_every_point_accurately(tmp_path):
    (tmp_path / "g.yaml").write_text(
        "fixed: {n_train: 256, n_test: 128, epochs: 1, width: 4, device: cpu}\n"
        "grid: {n_modules: [1, 2, 3]}\n"
    )
    done, pending, busy = expand_grid(*load_grid(tmp_path / "g.yaml"), tmp_path / "out")
    # what a sweep killed with -9 leaves: records saying running; one run had finished
    for point in (done, pending):
        point.folder.mkdir(parents=True)
        atomic_write_json(point.record_path, {"name": point.name, "status": "running",
                                              "attempt": 1, "error": None})  # fmt: skip
    assert run_experiment(done.config)["status"] == "finished"
    # and another process writes the third point's run folder
    busy.run_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, pathlib, workbench.records as r; "
         "r.RunLock(pathlib.Path(sys.argv[1])).acquire(); print('locked', flush=True); "
         "time.sleep(300)", str(busy.run_dir)],
        env=ENV, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = workbench("sweep", "g.yaml", "--out", "out", "--workers", "2", cwd=tmp_path)
    finally:
        holder.kill()
        holder.wait(timeout=30)
        holder.stdout.close()
    assert result.returncode == 1, result.stderr[-3000:]
    assert "1 finished, 1 failed, 1 skipped" in result.stdout
    with open(tmp_path / "out" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["finished", "finished", "failed"]
    assert not done.notebook.exists()  # finished by its folder: not run again
    assert rows[2]["error"].startswith(
        f"RunFolderError: out: got {str(busy.run_dir)!r}, a folder another run is writing "
        f"(pid {holder.pid} on "
    )
    assert "point n_modules-3 failed: RunFolderError: out: got " in result.stderr


def test_a_second_sweep_on_a_busy_folder_is_refused(tmp_path):
    (tmp_path / "g.yaml").write_text("grid: {width: [4]}")
    (tmp_path / "out").mkdir()
    with RunLock(tmp_path / "out", what="sweep"):
        with pytest.raises(ConfigError, match=rf"another sweep is writing \(pid {os.getpid()} on "):
            run_sweep(tmp_path / "g.yaml", tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "grid.yaml").exists()


@pytest.mark.parametrize(
    "text", ["", "fixed: {epochs: 1}", "grid: {}", "grid: []", "grid: [{width: [4]}, {}]"]
)
def test_an_empty_grid_is_refused_in_one_line(tmp_path, text):
    (tmp_path / "g.yaml").write_text(text)
    refused = r"^grid: got (no grid|an empty grid|an empty block) in .*, nothing to sweep; allowed"
    with pytest.raises(SweepError, match=refused) as err:
        run_sweep(tmp_path / "g.yaml", tmp_path / "out", progress=False)
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


# -- 6. the file system -------------------------------------------------------------------------
def mount_namespace_prefix(script: str) -> list[str]:
    """`unshare` into a private mount namespace running `sh -c script`: as root, or as a user
    mapped to root in a user namespace; skips where neither is allowed."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    prefix = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-r", "-m"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespace here ({probe.stderr.decode().strip()})")
    return [*prefix, "sh", "-c", script]


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Callable[[Path, list[str]], list[str]]]:
    """argv -> argv that runs with a folder read-only: chmod for a user; for root (whom
    permissions do not stop) a read-only bind mount, in a mount namespace of its own."""
    changed: list[Path] = []

    def wrap(folder: Path, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            for p in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
                p.chmod(0o555)
                changed.append(p)
            return argv
        script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
        return [*mount_namespace_prefix(script), str(folder), *argv]

    yield wrap
    for p in changed:
        p.chmod(0o755)


def test_read_only_folders_are_one_line(tmp_path, read_only):
    folder = tmp_path / "ro"
    folder.mkdir()
    argv = [WORKBENCH, "run", *flags(), "--quiet"]
    new = subprocess.run(
        read_only(folder, [*argv, "--out", str(folder / "run")]),
        env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert new.returncode == 2
    assert "which cannot be written (" in error_line(new)
    assert not (folder / "run").exists()
    # an existing run's folder turned read-only: the rerun cannot lock or write it
    run = tmp_path / "old"
    stop = threading.Event()
    run_experiment(tiny(tmp_path, out=str(run)), [lambda e, i: stop.set()], stop)
    before = (run / "summary.json").read_text()
    old = subprocess.run(
        read_only(run, [*argv, "--out", str(run)]),
        env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert old.returncode in (1, 2)
    assert "cannot be written (" in error_line(old) or "cannot write" in error_line(old)
    assert (run / "summary.json").read_text() == before


def test_disk_full_fails_in_one_line_and_records_failed(tmp_path):
    """A real full disk: a 96 kB tmpfs in a mount namespace of the run's own; without mount
    rights, a real file-size limit (RLIMIT_FSIZE: the same failed write, as EFBIG)."""
    copy = tmp_path / "copy"
    disk = tmp_path / "disk"
    disk.mkdir()
    argv = [WORKBENCH, "run", *flags(n_modules=2, width=32), "--quiet", "--out", str(disk / "run")]
    script = (
        'mount -t tmpfs -o size=96k tmpfs "$0" || exit 99; "$@"; rc=$?; '
        'cp -a "$0/run" "$COPY"; exit $rc'
    )
    try:
        command, limit = mount_namespace_prefix(script) + [str(disk), *argv], None
        reason = "no space left on the device"
    except pytest.skip.Exception:
        command, limit, reason = argv, 64 * 1024, "File too large"
        copy = disk / "run"

    def limit_file_size() -> None:
        if limit:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(
        command, env={**ENV, "COPY": str(copy)}, capture_output=True, text=True, timeout=120,
        preexec_fn=limit_file_size,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    line = error_line(result)
    assert line.startswith("workbench: error: out: cannot write ") and f"({reason})" in line
    on_disk = summary(copy)
    assert on_disk["status"] == "failed" and reason in on_disk["error"]
    assert not list(copy.rglob(".*.tmp"))  # the failed write removed its temporary file


def test_out_below_a_file_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("a file")
    result = workbench("run", *flags(), "--out", "notes.txt/run", cwd=tmp_path)
    assert result.returncode == 2
    assert error_line(result) == (
        "workbench: error: out: got 'notes.txt/run', below 'notes.txt', which is a file; "
        "allowed: a folder path"
    )


@pytest.mark.parametrize("command", ["run", "presets"])
def test_a_closed_pipe_ends_quietly(tmp_path, command):
    args = [WORKBENCH, "run", *flags(), "--quiet", "--out", "run"] if command == "run" else [
        WORKBENCH, "presets"
    ]  # fmt: skip
    # the reader is gone before anything is printed
    shell = " ".join(f"'{a}'" for a in args) + ' | true; exit "${PIPESTATUS[0]}"'
    result = subprocess.run(
        ["bash", "-c", shell], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120
    )
    assert result.returncode in (0, 141), result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


# -- 7. no silent surprises --------------------------------------------------------------------
def test_a_run_estimated_over_a_day_stops_until_yes(tmp_path):
    result = workbench("run", *flags(epochs="1e9"), "--out", "run", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    estimate = [line for line in lines if line.startswith("workbench: estimated ")]
    assert len(estimate) == 1 and " days for the rest of this run (" in estimate[0]
    assert any("--yes to go on" in line for line in lines)
    assert summary(tmp_path / "run")["status"] == "stopped"  # and resumable


def test_yes_goes_on_and_the_stopped_run_resumes(tmp_path, monkeypatch, capsys):
    import workbench.cli as cli

    monkeypatch.setattr(cli, "CONFIRM_ABOVE_S", 0.0)  # every run counts as long
    out = ["--out", str(tmp_path / "run")]
    assert cli.main(["run", *flags(n_modules=2), "--quiet", *out]) == 1
    assert "--yes to go on" in capsys.readouterr().err
    assert summary(tmp_path / "run")["status"] == "stopped"
    assert cli.main(["run", *flags(n_modules=2), "--quiet", "--yes", *out]) == 0
    assert "workbench: estimated " in capsys.readouterr().err
    assert summary(tmp_path / "run")["status"] == "finished"
    assert len(read_metrics(tmp_path / "run")) == 4  # each epoch once


def test_lock_file_names_its_holder(tmp_path):
    with RunLock(tmp_path):
        info = json.loads((tmp_path / ".lock").read_text())
        assert info["pid"] == os.getpid() and info["host"] and info["started_at"]
        with pytest.raises(Exception, match=f"pid {os.getpid()} on "):
            RunLock(tmp_path).acquire()  # a second open file: refused even in-process
    with RunLock(tmp_path):  # released: free again
        pass
