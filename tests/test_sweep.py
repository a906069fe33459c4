"""`workbench sweep`: a real grid through papermill, two kernels at a time, one point failing."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.batch.sweep import SweepError, expand_grid, load_grid, run_sweep

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
POINTS = ["n_modules=1", "n_modules=2", "dataset=mnist,data_dir=partial"]


def workbench(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "workbench"), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as f:
        return {row["point"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("sweep")
    raw = root / "partial" / "MNIST" / "raw"  # one of MNIST's four files: no download is tried
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"not all of mnist")
    (root / "grid.yaml").write_text(GRID)
    result = workbench("sweep", "grid.yaml", "--out", "out", "--workers", "2", cwd=root)
    return root, result


def test_sweep_runs_two_kernels_at_a_time_and_records_the_failing_point(sweep):
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
        "run_dir",
        "error",
    ):
        assert column in header, column
    for name, n_modules in (("n_modules=1", 1), ("n_modules=2", 2)):
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
    assert rows["n_modules=1"]["acc_module_2"] == ""  # a 1-module net has no second module
    failed = rows["dataset=mnist,data_dir=partial"]
    assert failed["status"] == "failed"
    assert failed["error"].startswith("DataError: data_dir: mnist files missing")
    assert failed["final_test_acc"] == ""
    assert "point dataset=mnist,data_dir=partial failed: DataError" in result.stderr
    # the two trainable points ran at the same time, in two worker processes
    first, second = (json.loads((out / p / "point.json").read_text()) for p in POINTS[:2])
    assert first["pid"] != second["pid"]
    assert (
        first["started_at"] < second["finished_at"] and second["started_at"] < first["finished_at"]
    )
    assert first["kernel_start_tries"] == second["kernel_start_tries"] == 1
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
    assert [r["label"] for r in rows] == ["n_modules=1", "n_modules=2"]
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

    assert refused("grid: {aux_depth: [1, 7]}") == (
        "grid point aux_depth=7: aux_depth: got 7; allowed: 0 to 4"
    )
    assert "unknown field 'aux_deep'" in refused("grid: {aux_deep: [1]}")
    assert "allowed: a non-empty list" in refused("grid: {aux_depth: 1}")
    assert "'out' is set by the sweep" in refused("fixed: {out: x}")
    assert "both fixed and swept" in refused("fixed: {width: 4}\ngrid: {width: [4, 8]}")
    assert "unknown key 'grids'" in refused("grids: {width: [4]}")
    assert "not valid YAML at line 1" in refused("grid: {width: [4")
    assert "appears twice" in refused("grid: [{width: [4]}, {width: [4]}]")
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
        "workbench sweep: error: grid point arch=resnet21: arch: got 'resnet21'; allowed: "
        "greedy-cnn, resnet20, resnet32, resnet56, resnet110, resnet, resnet18, vgg11, vgg13"
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
    point = tmp_path / "out" / "n_modules=1"
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
