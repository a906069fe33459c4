"""`workbench doctor`: its CPU part end to end, as real processes of the venv's command.

The quick doctor (every CPU run, the datasets, the checks) runs once for the module, on a
data_dir built here: one dataset complete (empty files at torchvision's paths: the doctor looks
for presence only), one partial, the streamed layouts as bare folders, the rest absent. A
second doctor, given a data_dir that is a file, must fail that check and exit 1. The CUDA
checks' logic (watching the steps, the verdicts) runs here on the CPU; tests/test_cuda.py runs
the checks themselves on a GPU.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from workbench.data import TORCHVISION_FILES
from workbench.doctor import cuda
from workbench.doctor.runs import QUICK, RunSpec, accuracy_floor, cpu_specs

WORKBENCH = Path(sys.executable).parent / "workbench"  # the venv's console script
DOCTOR_TIMEOUT_S = 180  # the quick doctor measured 6 s here, 28 s while other tests ran
FLAG_TIMEOUT_S = 30
CIFAR10_KEPT = 2  # of cifar10's 7 files, the first 2: a partial dataset


def workbench(args: list[str], cwd: Path, timeout: float, tmpdir: Path | None = None):
    """`workbench ARGS` as a process of its own; killed with its children past `timeout`."""
    env = dict(os.environ)
    if tmpdir is not None:  # where the doctor's temporary run folders go
        env["TMPDIR"] = str(tmpdir)
    process = subprocess.Popen(
        [str(WORKBENCH), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the doctor and its pipeline workers
        out, err = process.communicate()
        pytest.fail(f"workbench {' '.join(args)} ran past {timeout} s:\n{err[-3000:]}")
    return process.returncode, out, err


def make_data_dir(root: Path) -> Path:
    """mnist complete, cifar10 partial, ImageFolder and Tiny ImageNet layouts, nothing else."""
    for file, _md5 in TORCHVISION_FILES["mnist"]:
        (root / file).parent.mkdir(parents=True, exist_ok=True)
        (root / file).touch()
    for file, _md5 in TORCHVISION_FILES["cifar10"][:CIFAR10_KEPT]:
        (root / file).parent.mkdir(parents=True, exist_ok=True)
        (root / file).touch()
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
    tiny = root / "tiny-imagenet-200"
    for wnid in ("n01443537", "n01629819", "n01641577"):
        (tiny / "train" / wnid / "images").mkdir(parents=True)
    (tiny / "val" / "images").mkdir(parents=True)
    (tiny / "val" / "val_annotations.txt").touch()
    return root


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`workbench doctor --quick --data-dir D --json`: exit code, report, stderr, folders."""
    base = tmp_path_factory.mktemp("doctor")
    data_dir = make_data_dir(base / "data")
    tmpdir = base / "tmp"
    tmpdir.mkdir()
    args = ["doctor", "--quick", "--data-dir", str(data_dir), "--json"]  # no PATH: stdout
    code, out, err = workbench(args, base, DOCTOR_TIMEOUT_S, tmpdir)
    return {"code": code, "report": json.loads(out), "stderr": err, "tmpdir": tmpdir}


def test_quick_doctor_passes_with_a_real_run_of_each_method_on_the_cpu(quick: dict) -> None:
    report = quick["report"]
    assert quick["code"] == 0, quick["stderr"][-3000:]
    assert report["passed"] and report["failures"] == [] and report["quick"] is True
    assert all(c["passed"] for c in report["checks"])
    names = [r["name"] for r in report["runs"]]
    assert names == [s.label for s in cpu_specs()]  # each method, and the pipelined run
    assert any(r["pipeline"] and r["pipeline_devices"] == ["cpu", "cpu"] for r in report["runs"])
    for run in report["runs"]:
        assert run["status"] == "finished" and "error" not in run, run
        assert run["n_train"] == QUICK.n_train and run["n_test"] == QUICK.n_test
        # a real accuracy, above chance by 5 standard deviations of guessing's
        assert run["final_test_acc"] > run["accuracy_floor"] == round(accuracy_floor(256), 4)
        assert run["accuracy_floor"] > 0.19
        assert run["images_per_s"] > 0 and run["peak_memory_bytes"] > 0 and run["seconds"] > 0
        assert (run["precision"], run["tf32"]) == ("fp32", False)
        assert run["precision_reason"].startswith("auto on the CPU")
    assert report["warm_ups"][0]["name"] == "cpu parallel"
    # the run folders went with the doctor's temporary folder
    assert not list(quick["tmpdir"].glob("workbench-doctor-*"))


def test_quick_doctor_reports_versions_devices_and_what_it_skipped(quick: dict) -> None:
    report = quick["report"]
    versions = report["versions"]
    assert versions["python"] == platform.python_version()
    assert versions["torch"] == torch.__version__ and versions["cuda_runtime"] == torch.version.cuda
    assert versions["workbench"] == "0.1.0"
    cpu = report["devices"][0]
    assert cpu["device"] == "cpu" and cpu["capability"] is None and cpu["precision"] == "fp32"
    assert len(report["devices"]) == 1 + torch.cuda.device_count()
    skipped = {s["part"]: s["reason"] for s in report["skipped"]}
    assert skipped["cpu parallel torchrun x2 (gloo)"].startswith("--quick")
    if not torch.cuda.is_available():
        assert skipped["CUDA runs and CUDA checks"].startswith("no CUDA")
    chromium = report["chromium"]
    if chromium["path"] is None:
        assert chromium["summary"] == "none: figures are saved as HTML only"
        assert any(w.startswith("chromium for PNG export: none") for w in report["warnings"])
    else:
        assert Path(chromium["path"]).is_file()
    # with --json -, stdout is the JSON alone and the readable report goes to stderr
    assert "workbench doctor: ok: all" in quick["stderr"]
    assert "skipped: CUDA runs" in quick["stderr"] or torch.cuda.is_available()


def test_quick_doctor_finds_the_datasets_present_partial_and_absent(quick: dict) -> None:
    datasets = quick["report"]["datasets"]
    assert "not verified" in datasets["checksums"]
    embedded = datasets["embedded"]["mnist-5k"]
    assert embedded["state"] == "present" and Path(embedded["path"]).is_file()
    found = datasets["in_memory"]
    assert found["mnist"] == {"state": "present", "files_expected": 4, "files_present": 4}
    cifar10 = [file for file, _ in TORCHVISION_FILES["cifar10"]]
    assert found["cifar10"]["state"] == "partial"
    assert found["cifar10"]["missing"] == cifar10[CIFAR10_KEPT:]
    assert {found[n]["state"] for n in ("fashion-mnist", "cifar100", "svhn", "stl10")} == {"absent"}
    streamed = datasets["streamed"]
    assert streamed["imagefolder"]["state"] == "present"
    assert streamed["imagefolder"]["train_classes"] == streamed["imagefolder"]["val_classes"] == 2
    assert streamed["imagenet"]["state"] == "absent"  # 2 class folders, not ImageNet's 1000
    assert streamed["tiny-imagenet"]["state"] == "present"
    assert streamed["tiny-imagenet"]["train_classes"] == 3
    # a partial dataset is a warning, not a failure (the doctor passed)
    warned = [w for w in quick["report"]["warnings"] if w.startswith("dataset cifar10: partial")]
    assert len(warned) == 1 and "data_batch_3" in warned[0]


def test_a_data_dir_that_is_a_file_fails_its_check_and_exits_1(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("a file where the datasets' folder should be")
    report_path = tmp_path / "out" / "doctor.json"
    args = ["doctor", "--quick", "--data-dir", str(not_a_folder), "--json", str(report_path)]
    code, out, err = workbench(args, tmp_path, DOCTOR_TIMEOUT_S)
    assert code == 1, err[-3000:]
    report = json.loads(report_path.read_text())  # written, and only the finished file
    assert [p.name for p in report_path.parent.iterdir()] == ["doctor.json"]
    assert report["passed"] is False
    assert len(report["failures"]) == 1
    assert report["failures"][0].startswith(f"data_dir: got {str(not_a_folder)!r}, which is a file")
    # the text report (stdout, with --json PATH) says which check failed, in one line
    failed = [line for line in out.splitlines() if line.startswith("failed: ")]
    assert failed == [f"failed: {report['failures'][0]}"]
    assert out.startswith("workbench doctor: FAILED: 1 of ")
    assert all(r["status"] == "finished" for r in report["runs"])  # the rest still ran


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--quick", "--bogus"], "--bogus"),
        (["--quick", "--json", ""], "--json"),
        (["--json", "{parent}/x.json"], "--json"),
        (["--json", "{folder}"], "--json"),
        (["--data-dir", ""], "--data-dir"),
    ],
)
def test_a_bad_flag_exits_2_with_one_line(tmp_path: Path, args: list[str], names: str) -> None:
    file = tmp_path / "a-file"
    file.write_text("")
    args = [a.format(parent=file, folder=tmp_path) for a in args]
    code, out, err = workbench(["doctor", *args], tmp_path, FLAG_TIMEOUT_S)
    assert code == 2
    assert out == "" and len(err.splitlines()) == 1 and names in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing ran, nothing written


def test_the_sync_check_watches_every_training_step(tmp_path: Path) -> None:
    """On the CPU the steps run without CUDA's debug mode: the watching and the verdict."""
    config = RunSpec("parallel").config(QUICK, tmp_path / "run")
    step_syncs = cuda.watch_steps(config, mode=None)
    assert len(step_syncs) == QUICK.n_train // config.batch_size  # every step, watched
    assert step_syncs == [[] for _ in step_syncs]
    assert cuda.sync_verdict(step_syncs, None).passed
    assert not (tmp_path / "run").exists()  # a few steps, no run folder
    # a sync in a steady step fails, naming the step; the warm-up step's is only counted
    with cuda.sync_debug(None) as caught:
        warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
        warnings.warn("an unrelated warning", UserWarning, stacklevel=1)
    synced = cuda.sync_messages(caught)
    assert len(synced) == 1 and synced[0].startswith("called a synchronizing CUDA operation (")
    failed = cuda.sync_verdict([[], [], synced, []], "warn")
    assert not failed.passed and "at step 3" in failed.reason
    assert cuda.sync_verdict([synced, [], []], "warn").passed
    assert not cuda.sync_verdict([[]], "warn").passed  # no steady step: nothing was checked


def test_the_memory_estimate_check_on_the_cpu(tmp_path: Path) -> None:
    """The check the doctor runs on cuda:0, here on the CPU: a run's estimate (resident set
    before training plus what it adds) against its measured peak resident set."""
    details, check = cuda.check_memory_estimate(RunSpec("parallel").config(QUICK, tmp_path / "r"))
    assert check.passed, check.reason
    assert 0.7 <= details["estimated_bytes"] / details["measured_bytes"] <= 1.3
    assert cuda.estimate_verdict(100 * 2**20, 100 * 2**20, "cpu").passed
    low = cuda.estimate_verdict(50 * 2**20, 100 * 2**20, "cuda:0")
    assert not low.passed and "0.50x" in low.reason and "cuda:0" in low.name
    assert not cuda.estimate_verdict(0, 100, "cpu").passed


def test_the_memory_and_precision_verdicts(quick: dict) -> None:
    assert cuda.memory_verdict(4096, 4096).passed and cuda.memory_verdict(4096, 0).passed
    leaked = cuda.memory_verdict(4096, 4608)
    assert not leaked.passed and "512 bytes" in leaked.reason
    runs = quick["report"]["runs"]
    assert cuda.precision_verdict("cpu", None, runs).passed  # the doctor's own CPU runs
    # the same runs against an 8.0 GPU's row of the table: bf16 and TF32, which they did not run
    assert not cuda.precision_verdict("cuda:0", (8, 0), runs).passed
    assert not cuda.precision_verdict("cpu", None, []).passed
