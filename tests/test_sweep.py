"""`workbench sweep`: a real grid through papermill on real Dask clusters (a LocalCluster of two
workers, and a `dask scheduler` with two `dask worker` processes on 127.0.0.1), one point failing
at run time, a rerun, a stop, an unreachable scheduler."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil  # a dependency of distributed
import pytest

from workbench.batch.sweep import SweepError, expand_grid, load_grid, run_sweep
from workbench.batch.sweep_point import KERNEL_START_TRIES

BIN = Path(sys.executable).parent
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# two points that train, and one whose data folder lacks files: Config accepts it (the field
# values are fine), the notebook fails at run time with a DataError
GRID = """
fixed: {n_train: 200, n_test: 100, epochs: 1, width: 4, device: cpu}
grid:
  - {n_modules: [1, 2]}
  - {dataset: [mnist], data_dir: [partial]}
"""
POINTS = ["n_modules-1", "n_modules-2", "dataset-mnist_data_dir-partial"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # a shared 2-core machine: one thread each
WORKER = re.compile(r"^tcp://127\.0\.0\.1:\d+$")


def workbench(
    *args: str, cwd: Path, env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "workbench"), *args],
        cwd=cwd,
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def partial_mnist(root: Path) -> None:
    """root/partial: one of MNIST's four files, so the data fails to load (no download tried)."""
    raw = root / "partial" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"not all of mnist")


def stop_all(processes: list[subprocess.Popen]) -> None:
    """Terminate, wait (bounded), kill what is left: every process a test started."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as f:
        return {row["point"]: row for row in csv.DictReader(f)}


def test_gpus_are_dealt_to_workers_round_robin_as_cuda_reads_the_variable(monkeypatch):
    from workbench.batch.sweep_cluster import gpu_of_worker, visible_gpus

    # more workers than GPUs wrap around; a worker not named by a number, or no GPU, gets none
    dealt = [gpu_of_worker(["5", "7"], w).get("CUDA_VISIBLE_DEVICES") for w in (0, 1, 2, "3")]
    assert dealt == ["5", "7", "5", "7"]
    assert gpu_of_worker(["5", "7"], "tcp://127.0.0.1:1") == {} and gpu_of_worker([], 0) == {}
    # an entry such as -1 hides the rest from CUDA, so it ends the list here too
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 4,-1,6")
    assert visible_gpus() == ["3", "4"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("sweep")
    partial_mnist(root)
    (root / "grid.yaml").write_text(GRID)
    # two GPUs as CUDA names them (none is there: the points train on the CPU), one per worker
    gpus = {"CUDA_VISIBLE_DEVICES": "5,7"}
    result = workbench("sweep", "grid.yaml", "--out", "out", "--workers", "2", cwd=root, env=gpus)
    return root, result


def test_a_local_cluster_runs_two_points_at_a_time_and_records_the_failing_one(sweep):
    root, result = sweep
    assert result.returncode == 1, result.stderr[-3000:]  # one point failed
    assert "2 finished, 1 failed, 0 skipped" in result.stdout
    out = root / "out"
    rows = read_rows(out / "results.csv")
    assert list(rows) == POINTS
    header = list(next(iter(rows.values())))
    for column in (
        "n_modules",
        "dataset",
        "data_dir",
        "status",
        "acc_module_1",
        "acc_module_2",
        "final_test_acc",
        "ensemble_test_acc",
        "wall_time_s",
        "worker",
        "run_dir",
        "error",
    ):
        assert column in header, column
    for name, n_modules in (("n_modules-1", 1), ("n_modules-2", 2)):
        row = rows[name]
        assert row["status"] == "finished" and row["error"] == ""
        assert row["n_modules"] == str(n_modules)
        assert 0 <= float(row["final_test_acc"]) <= 1 and float(row["wall_time_s"]) > 0
        assert float(row["ensemble_test_acc"]) >= 0
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert summary["status"] == "finished"
        assert float(row[f"acc_module_{n_modules}"]) == pytest.approx(summary["final_test_acc"])
        assert (Path(row["run_dir"]) / "figures" / "depth.html").is_file()
        assert Path(row["notebook"]).stat().st_size < 1_000_000
    assert rows["n_modules-1"]["acc_module_2"] == ""  # a 1-module net has no second module
    failed = rows["dataset-mnist_data_dir-partial"]
    assert failed["status"] == "failed"
    assert failed["error"].startswith("DataError: data_dir: mnist files missing")
    assert failed["final_test_acc"] == ""
    assert "point dataset-mnist_data_dir-partial failed: DataError" in result.stderr
    assert re.search(
        r"dask scheduler tcp://127\.0\.0\.1:\d+, 2 workers; dashboard http://", result.stderr
    )
    # the two trainable points ran at the same time, on the local cluster's two workers
    first, second = (json.loads((out / p / "point.json").read_text()) for p in POINTS[:2])
    assert WORKER.match(first["worker"]) and WORKER.match(second["worker"])
    assert first["worker"] != second["worker"]
    assert [rows[p]["worker"] for p in POINTS[:2]] == [first["worker"], second["worker"]]
    assert (
        first["started_at"] < second["finished_at"] and second["started_at"] < first["finished_at"]
    )
    # a kernel that did not start in time on a loaded machine is started again, by design
    # (a clean-clone CI run saw one such retry): each point's kernel started within its tries
    assert all(1 <= p["kernel_start_tries"] <= KERNEL_START_TRIES for p in (first, second))
    # each worker's point process (and its kernel) got a GPU of its own, dealt round robin
    assert {first["cuda_visible_devices"], second["cuda_visible_devices"]} == {"5", "7"}
    assert (out / "grid.yaml").read_text() == GRID


def test_compare_notebook_over_the_sweep_folder(sweep):
    root, _ = sweep
    result = subprocess.run(
        [str(BIN / "papermill"), str(NOTEBOOKS / "compare.ipynb"), "compare.ipynb",
         "-p", "sweep_dir", "out", "--no-progress-bar"],
        cwd=root, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with open(root / "out" / "comparison" / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    # the failed point never made a run folder (its data failed to load first)
    assert [r["label"] for r in rows] == ["n_modules=1", "n_modules=2"]  # labels: the fields
    assert rows[1]["acc_module_2"] and not rows[0]["acc_module_2"]
    html = (root / "out" / "comparison" / "depth.html").read_text()
    assert "n_modules=1" in html and "n_modules=2" in html
    assert (root / "compare.ipynb").stat().st_size < 1_000_000


def test_rerun_skips_finished_points_and_runs_the_failed_one_again(sweep):
    root, _ = sweep
    out = root / "out"
    before = {p: (out / p / "experiment.ipynb").stat().st_mtime_ns for p in POINTS}
    records = {p: json.loads((out / p / "point.json").read_text()) for p in POINTS}
    result = workbench("sweep", "grid.yaml", "--out", "out", "--workers", "2", cwd=root)
    assert result.returncode == 1
    assert "0 finished, 1 failed, 2 skipped" in result.stdout
    for p in POINTS[:2]:  # untouched: neither the notebook nor the record was rewritten
        assert (out / p / "experiment.ipynb").stat().st_mtime_ns == before[p]
        assert json.loads((out / p / "point.json").read_text()) == records[p]
    again = json.loads((out / POINTS[2] / "point.json").read_text())
    assert again["attempt"] == 2 and again["started_at"] > records[POINTS[2]]["finished_at"]
    assert (out / POINTS[2] / "experiment.ipynb").stat().st_mtime_ns > before[POINTS[2]]
    rows = read_rows(out / "results.csv")
    assert [r["status"] for r in rows.values()] == ["finished", "finished", "failed"]


def test_bad_grids_are_refused_in_one_line_before_anything_runs(tmp_path):
    def refused(text: str) -> str:
        (tmp_path / "g.yaml").write_text(text)
        with pytest.raises(SweepError) as e:
            run_sweep(tmp_path / "g.yaml", tmp_path / "out", progress=False)
        assert not (tmp_path / "out").exists()  # nothing created, nothing run
        assert "\n" not in str(e.value)
        return str(e.value)

    def refused_with(**flags) -> str:
        (tmp_path / "g.yaml").write_text("grid: {width: [4]}")
        with pytest.raises(SweepError) as e:
            run_sweep(tmp_path / "g.yaml", tmp_path / "out", progress=False, **flags)
        assert not (tmp_path / "out").exists()
        return str(e.value)

    assert refused("grid: {aux_depth: [1, 7]}") == (
        "grid point aux_depth-7: aux_depth: got 7; allowed: 0 to 4"
    )
    assert "unknown field 'aux_deep'" in refused("grid: {aux_deep: [1]}")
    assert "allowed: a non-empty list" in refused("grid: {aux_depth: 1}")
    assert "'out' is set by the sweep" in refused("fixed: {out: x}")
    assert "both fixed and swept" in refused("fixed: {width: 4}\ngrid: {width: [4, 8]}")
    assert "unknown key 'grids'" in refused("grids: {width: [4]}")
    assert "not valid YAML at line 1" in refused("grid: {width: [4")
    assert "appears twice" in refused("grid: [{width: [4]}, {width: [4]}]")
    assert "scheduler: got 'localhost'; allowed: a Dask scheduler's address" in refused_with(
        scheduler="localhost"
    )
    assert refused_with(workers=2, scheduler="tcp://127.0.0.1:1").startswith(
        "workers: got 2 with --scheduler; allowed: one of the two"
    )
    # a folder holding another config's run is refused too, not overwritten
    (tmp_path / "g.yaml").write_text("grid: {width: [4]}")
    (point,) = expand_grid(*load_grid(tmp_path / "g.yaml"), tmp_path / "old")
    point.run_dir.mkdir(parents=True)
    (point.run_dir / "config.json").write_text(point.config.replace(epochs=9).to_json())
    with pytest.raises(SweepError, match="holds a run with epochs=9, not 3"):
        run_sweep(tmp_path / "g.yaml", tmp_path / "old", progress=False)
    # the command: exit code 2 and one line on stderr
    (tmp_path / "g.yaml").write_text("grid: {arch: [resnet20, resnet21]}")
    result = workbench("sweep", "g.yaml", "--out", "cli", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "workbench sweep: error: grid point arch-resnet21: arch: got 'resnet21'; allowed: "
        "greedy-cnn, resnet20, resnet32, resnet56, resnet110, resnet, resnet18, vgg11, vgg13, vgg8b"
    ]
    assert not (tmp_path / "cli").exists()


def test_a_kernel_that_cannot_start_is_retried_then_fails_clearly(tmp_path):
    # a kernelspec whose process exits at once: papermill never gets a kernel to talk to
    spec = tmp_path / "jupyter" / "kernels" / "broken"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-c", "import sys; sys.exit(3)", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "broken"}))
    (tmp_path / "g.yaml").write_text("fixed: {epochs: 1, n_train: 100}\ngrid: {n_modules: [1]}")
    result = workbench(
        "sweep", "g.yaml", "--out", "out", "--kernel", "broken", "--quiet",
        cwd=tmp_path, env={"JUPYTER_PATH": str(tmp_path / "jupyter")},
    )  # fmt: skip
    assert result.returncode == 1
    point = tmp_path / "out" / "n_modules-1"
    record = json.loads((point / "point.json").read_text())
    assert record["status"] == "failed" and record["kernel_start_tries"] == 3
    assert record["error"].startswith("kernel 'broken' did not start after 3 tries: ")
    assert (point / "kernel.log").read_text().count("Kernel died") == 3
    assert not (point / "run").exists()


@pytest.mark.parametrize("grid", sorted((NOTEBOOKS / "grids").glob("*.yaml")), ids=lambda p: p.name)
def test_example_grids_are_valid(grid, tmp_path):
    points = expand_grid(*load_grid(grid), tmp_path)
    assert len(points) >= 4
    assert len({p.name for p in points}) == len(points)


@pytest.mark.parametrize("name", ["greedy-aux-depth", "accelerated", "kinetic-tau"])
def test_example_grids_are_the_teaching_notebooks_settings_over_three_seeds(tmp_path, name):
    grid = Path(__file__).resolve().parents[1] / "notebooks" / "grids" / f"{name}.yaml"
    points = expand_grid(*load_grid(grid), tmp_path)  # every point validated as a Config
    assert len(points) >= 12
    assert {p.config.seed for p in points} == {0, 1, 2}
    assert all(p.config.dataset == "cifar10" for p in points)


def test_point_folders_are_shell_safe_readable_and_distinct(tmp_path):
    (tmp_path / "g.yaml").write_text(
        "fixed: {epochs: 1}\n"
        "grid:\n"
        "  - {aux_depth: [1], downsampling: [maxpool]}\n"
        "  - {data_dir: ['my data/x', 'my data,x', '../up']}\n"
    )
    names = [p.name for p in expand_grid(*load_grid(tmp_path / "g.yaml"), tmp_path / "out")]
    assert names[:2] == ["aux_depth-1_downsampling-maxpool", "data_dir-my.data.x"]
    # the same folder name for different values: the later point gets a hash of its values
    assert re.fullmatch(r"data_dir-my\.data\.x-[0-9a-f]{6}", names[2])
    assert names[3] == "data_dir-...up"  # "/" became "."
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", n) and n not in (".", "..") for n in names)
    # a sweep folder from before these names: its point folders are used as they are
    (tmp_path / "out" / "aux_depth=1,downsampling=maxpool").mkdir(parents=True)
    again = expand_grid(*load_grid(tmp_path / "g.yaml"), tmp_path / "out")
    assert again[0].name == "aux_depth=1,downsampling=maxpool"
    assert again[0].folder == tmp_path / "out" / "aux_depth=1,downsampling=maxpool"


def test_a_points_driver_process_does_not_import_torch():
    """The process that runs a point's notebook only drives papermill and writes point.json;
    the kernel trains. Importing torch there cost each point ~4 s on this 2-core machine."""
    code = (
        "import sys, workbench.batch.sweep_point as point, workbench.records, papermill\n"
        "from workbench.batch.notebook import EXPERIMENT_NOTEBOOK\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"


SLOW_GRID = """
fixed: {n_train: 200, n_test: 100, width: 4, device: cpu, batch_size: 50, epochs: 500}
grid: {seed: [1, 2]}
"""


def test_ctrl_c_stops_the_local_clusters_point_and_leaves_no_process(tmp_path):
    (tmp_path / "g.yaml").write_text(SLOW_GRID)
    log = tmp_path / "stderr.txt"  # a file, not a pipe: what it says is there whatever happens
    with open(log, "w") as err:
        sweep = subprocess.Popen(
            [str(BIN / "workbench"), "sweep", "g.yaml", "--out", "out", "--workers", "1",
             "--quiet"],
            cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=err, text=True,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )  # fmt: skip
    point = tmp_path / "out" / "seed-1"
    try:
        deadline = time.monotonic() + 240
        while not (point / "run" / "metrics.jsonl").exists():  # its kernel is training
            assert sweep.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        family = psutil.Process(sweep.pid).children(recursive=True)  # worker, point, kernel
        assert len(family) >= 3
        os.killpg(sweep.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole group gets it
        try:
            code = sweep.wait(timeout=60)
        except subprocess.TimeoutExpired:
            code = None
        stderr = log.read_text()
        assert code == 130, f"the sweep did not end in 60 s of its Ctrl-C; it said:\n{stderr}"
    finally:
        stop_all([sweep])
    _, alive = psutil.wait_procs(family, timeout=15)
    assert alive == []
    assert stderr.splitlines()[-1] == "workbench sweep: interrupted; finished points are kept"
    assert "Traceback" not in stderr and "WARNING" not in stderr  # the workers did not crash
    record = json.loads((point / "point.json").read_text())
    assert record["status"] == "stopped" and "run the sweep again" in record["error"]
    assert json.loads((point / "run" / "summary.json").read_text())["status"] == "stopped"
    rows = read_rows(tmp_path / "out" / "results.csv")
    assert [r["status"] for r in rows.values()] == ["stopped", "pending"]
    assert not (tmp_path / "out" / "seed-2").exists()  # queued, cancelled: it never started


# -- an existing cluster: `dask scheduler` and two `dask worker` processes ----------------------
@pytest.fixture
def dask_cluster(tmp_path):
    """A scheduler and two single-threaded workers on 127.0.0.1, stopped after the test."""
    from distributed import Client

    scheduler_file = tmp_path / "scheduler.json"
    env = {**ENV, "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "1.0"}  # a task each
    processes: list[subprocess.Popen] = []

    def start(*args: str) -> None:
        with open(tmp_path / f"dask-{len(processes)}.log", "wb") as log:
            processes.append(subprocess.Popen([str(BIN / "dask"), *args], cwd=tmp_path, env=env,
                                              stdout=log, stderr=subprocess.STDOUT))  # fmt: skip

    try:
        start("scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
              "127.0.0.1:0", "--scheduler-file", str(scheduler_file))  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                address = json.loads(scheduler_file.read_text())["address"]
                break
            except (OSError, ValueError, KeyError):
                assert time.monotonic() < deadline, "the scheduler did not start"
                time.sleep(0.2)
        for _ in range(2):
            start("worker", address, "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard")
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=120)
            workers = sorted(client.scheduler_info()["workers"])
        yield address, workers, processes
    finally:
        stop_all(processes)


def descendants(processes: list[subprocess.Popen]) -> list[psutil.Process]:
    found = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            found += psutil.Process(process.pid).children(recursive=True)
    return found


# one point finishes, one fails at run time, two are still training when the sweep is stopped,
# and the last is still queued then (two workers, one point each at a time)
CLUSTER_GRID = """
fixed: {n_train: 200, n_test: 100, width: 4, device: cpu, batch_size: 50}
grid:
  - {epochs: [1]}
  - {epochs: [1], dataset: [mnist], data_dir: [partial]}
  - {epochs: [500], seed: [1, 2, 3]}
"""
CLUSTER_POINTS = [
    "epochs-1",
    "epochs-1_dataset-mnist_data_dir-partial",
    "epochs-500_seed-1",
    "epochs-500_seed-2",
    "epochs-500_seed-3",
]


def test_a_sweep_on_an_existing_cluster_records_workers_isolates_a_failure_and_stops(
    dask_cluster, tmp_path
):
    address, workers, processes = dask_cluster
    idle = {p.pid for p in descendants(processes)}  # the workers' own processes
    partial_mnist(tmp_path)
    (tmp_path / "g.yaml").write_text(CLUSTER_GRID)
    sweep = subprocess.Popen(
        [str(BIN / "workbench"), "sweep", "g.yaml", "--out", "out", "--scheduler", address,
         "--quiet"],
        cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out = tmp_path / "out"
    try:
        deadline = time.monotonic() + 300
        while not all((out / p / "run" / "metrics.jsonl").exists() for p in CLUSTER_POINTS[2:4]):
            assert sweep.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        busy = [p for p in descendants(processes) if p.pid not in idle]  # points and kernels
        assert len(busy) >= 4
        sweep.send_signal(signal.SIGTERM)
        assert sweep.wait(timeout=60) == 130
        stderr = sweep.stderr.read()
    finally:
        stop_all([sweep])
        sweep.stderr.close()
    _, alive = psutil.wait_procs(busy, timeout=15)
    assert alive == []  # each running point's process and kernel ended with the sweep
    assert all(p.poll() is None for p in processes)  # the cluster itself lives on
    assert f"sweep: dask scheduler {address}, 2 workers; dashboard http://127.0.0.1:" in stderr
    link = re.search(r"dashboard (http://\S+)", stderr).group(1)
    with urllib.request.urlopen(link, timeout=30) as page:  # the dashboard is there
        assert page.status == 200
    assert f"point {CLUSTER_POINTS[1]} failed: DataError" in stderr
    assert "interrupted; finished points are kept" in stderr
    rows = read_rows(out / "results.csv")
    assert list(rows) == CLUSTER_POINTS
    statuses = ["finished", "failed", "stopped", "stopped", "pending"]
    assert [r["status"] for r in rows.values()] == statuses
    assert 0 <= float(rows["epochs-1"]["final_test_acc"]) <= 1
    assert rows[CLUSTER_POINTS[1]]["error"].startswith("DataError: data_dir: mnist files missing")
    # each point that ran names the test's worker that ran it; both workers ran points
    ran = [rows[p]["worker"] for p in CLUSTER_POINTS[:4]]
    assert set(ran) == set(workers) and rows[CLUSTER_POINTS[4]]["worker"] == ""
    for name in CLUSTER_POINTS[:4]:
        record = json.loads((out / name / "point.json").read_text())
        assert record["worker"] == rows[name]["worker"]
    for name in CLUSTER_POINTS[2:4]:
        record = json.loads((out / name / "point.json").read_text())
        assert record["status"] == "stopped" and "run the sweep again" in record["error"]
        assert json.loads((out / name / "run" / "summary.json").read_text())["status"] == "stopped"
    assert not (out / CLUSTER_POINTS[4]).exists()  # queued, cancelled: it never started


def test_an_unreachable_scheduler_is_one_line_not_a_hang(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "g.yaml").write_text("grid: {width: [4]}")
    address = f"tcp://127.0.0.1:{port}"
    with pytest.raises(SweepError) as e:
        run_sweep(tmp_path / "g.yaml", tmp_path / "out", scheduler=address, progress=False)
    assert str(e.value) == (
        f"scheduler: cannot reach '{address}': nothing answered within 5 s; allowed: the "
        "address of a running dask scheduler that this machine can reach"
    )
