"""`workbench reproduce`: the reproduction table is computed from run folders.

Most tests write run folders by hand (a preset's config.json and a summary.json with the fields
run_experiment writes), so they need no data; the last ones train real tiny runs on the CIFAR-10
JPEG copy in ../shared/data and skip when it is absent.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED_DATA

from workbench.batch.reproduce import (
    COLUMNS,
    find_runs,
    match_preset,
    reproduction_table,
    to_markdown,
    write_csv,
)
from workbench.cli import main
from workbench.presets import PRESETS, preset

K2 = "belilovsky-k2-cifar10"
ORIGINAL = "original (checksums verified)"
MODIFIED = "modified copy (checksums differ from the originals)"
HEADER = [
    "preset",
    "paper_number",
    "this_run",
    "spread",
    "difference",
    "runs",
    "device",
    "wall_time_s",
    "changed",
    "status",
]


def make_run(
    folder: Path,
    preset_name: str = K2,
    *,
    seed: int = 0,
    status: str = "finished",
    acc: float | None = 0.9,
    device_name: str = "NVIDIA H200",
    wall_time_s: float = 100.0,
    copy: str = ORIGINAL,
    summary_extra: dict[str, Any] | None = None,
    **overrides: Any,
) -> Path:
    """A run folder as run_experiment leaves it: the preset's config (with overrides) and a
    summary with the fields `reproduce` reads."""
    config = preset(preset_name, out=str(folder), seed=seed, **overrides)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(config.to_json() + "\n")
    summary = {
        "status": status,
        "final_test_acc": acc,
        "ensemble_test_acc": acc,
        "device": "cpu" if device_name == "cpu" else "cuda:0",
        "device_name": device_name,
        "wall_time_s": wall_time_s,
        "data": {"dataset": config.dataset, "copy": copy},
        **(summary_extra or {}),
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def table(*paths: Path, notes: list[str] | None = None) -> list[dict[str, Any]]:
    return reproduction_table(find_runs(paths), notes)


# -- matching -----------------------------------------------------------------------------------
def test_a_preset_config_matches_its_preset_whatever_the_non_experiment_fields() -> None:
    config = preset(K2, seed=7, device="cuda", data_dir="/data", precision="fp32", out="x")
    match = match_preset(config)
    assert (match.preset, match.differences, match.tied_with) == (K2, {}, ())


def test_changed_fields_are_the_runs_values() -> None:
    match = match_preset(preset("belilovsky-k3-cifar10", epochs=1, n_train=500))
    assert match.preset == "belilovsky-k3-cifar10"
    assert match.differences == {"n_train": 500, "epochs": 1}


def test_a_run_as_close_to_two_presets_is_ambiguous() -> None:
    # k2 and k3 differ only in aux_depth: depth 4 is one field away from both
    match = match_preset(preset(K2, aux_depth=4))
    assert match.preset == K2 and match.tied_with == ("belilovsky-k3-cifar10",)


def test_other_dataset_or_arch_is_no_paper_preset() -> None:
    assert match_preset(preset("quick")).preset is None  # embedded digits
    assert match_preset(preset(K2, arch="vgg11", width=0)).preset is None


# -- the table ----------------------------------------------------------------------------------
def test_seeds_make_one_row_with_mean_and_spread(tmp_path: Path) -> None:
    for seed, acc in enumerate((0.90, 0.91, 0.92)):
        make_run(tmp_path / f"seed{seed}", seed=seed, acc=acc, wall_time_s=100.0 + seed)
    [row] = table(tmp_path)
    assert list(row)[:10] == HEADER
    assert row["preset"] == K2 and row["paper_number"] == PRESETS[K2].paper_number == 90.4
    assert row["this_run"] == 91.0 and row["spread"] == 1.0
    assert row["difference"] == pytest.approx(0.6)
    assert row["runs"] == 3 and row["seeds"] == "0 1 2"
    assert row["status"] == "finished" and row["changed"] == ""
    assert row["device"] == "NVIDIA H200" and row["wall_time_s"] == 101.0
    assert row["metric"] == "final_test_acc" and row["data_copy"] == "original"
    assert row["eval_protocol"] == "last"  # older summary without it: the config's
    assert len(row["run_dirs"].split("; ")) == 3


def test_one_run_has_no_spread_and_a_signed_difference(tmp_path: Path) -> None:
    make_run(tmp_path / "run", acc=0.88123)
    [row] = table(tmp_path)
    assert row["this_run"] == 88.12 and row["spread"] is None
    assert row["difference"] == pytest.approx(-2.28)  # 88.12 - 90.4: the row's own numbers


def test_changed_runs_get_their_own_row_listing_the_fields(tmp_path: Path) -> None:
    make_run(tmp_path / "paper", acc=0.9)
    make_run(tmp_path / "short-a", seed=0, acc=0.5, epochs=1, n_train=500)
    make_run(tmp_path / "short-b", seed=1, acc=0.6, epochs=1, n_train=500)
    unchanged, changed = table(tmp_path)
    assert unchanged["changed"] == "" and unchanged["this_run"] == 90.0
    assert changed["changed"] == "n_train=500 epochs=1"
    assert changed["runs"] == 2 and changed["this_run"] == 55.0
    assert changed["difference"] == pytest.approx(55.0 - 90.4)  # still shown, but marked
    markdown = to_markdown([unchanged, changed])
    assert f"| {K2} (changed) |" in markdown and f"| {K2} | 90.4 | 90.00 |" in markdown


def test_a_modified_data_copy_counts_as_a_change(tmp_path: Path) -> None:
    make_run(tmp_path / "jpeg", copy=MODIFIED)
    [row] = table(tmp_path)
    assert row["changed"] == "data=modified copy" and row["data_copy"] == "modified copy"
    make_run(tmp_path / "jpeg-short", copy=MODIFIED, epochs=2)
    assert table(tmp_path)[1]["changed"] == "epochs=2 data=modified copy"


def test_unfinished_runs_are_kept_apart_and_not_averaged(tmp_path: Path) -> None:
    make_run(tmp_path / "a", seed=0, acc=0.9)
    make_run(tmp_path / "b", seed=1, acc=0.2, status="stopped")
    make_run(tmp_path / "c", seed=2, acc=None, status="running")
    make_run(tmp_path / "d", seed=3, acc=None, status="finished")  # finished without the number
    rows = table(tmp_path)
    by_status = {r["status"]: r for r in rows}
    assert set(by_status) == {"finished", "stopped", "running", "finished, no final_test_acc"}
    assert by_status["finished"]["this_run"] == 90.0 and by_status["finished"]["runs"] == 1
    for status in ("stopped", "running", "finished, no final_test_acc"):
        row = by_status[status]
        assert row["runs"] == 1 and row["this_run"] is None and row["difference"] is None
    assert rows[0]["status"] == "finished"  # the averaged row comes first


def test_devices_and_protocols_are_listed(tmp_path: Path) -> None:
    make_run(tmp_path / "gpu", seed=0, device_name="NVIDIA H200")
    make_run(tmp_path / "cpu", seed=1, device_name="cpu")
    [row] = table(tmp_path)
    assert row["device"] == "cpu; NVIDIA H200"  # run folders are read in sorted order
    stl = "trgl-resnet110-stl10"
    make_run(tmp_path / "stl", stl, summary_extra={"eval_protocol": "trgl-best"}, acc=0.8)
    stl_row = next(r for r in table(tmp_path) if r["preset"] == stl)
    assert stl_row["eval_protocol"] == "trgl-best" and stl_row["difference"] == pytest.approx(0.28)


def test_sweep_nesting_and_unusable_folders(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        make_run(sweep / f"seed={seed}" / "run", seed=seed, acc=0.9 + seed / 100)
    (sweep / "results.csv").write_text("point\n")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"epochs": "many"}')
    (broken / "summary.json").write_text("{}")
    started = make_run(tmp_path / "started")
    (started / "summary.json").unlink()
    make_run(tmp_path / "digits", "quick")
    notes: list[str] = []
    [row] = table(tmp_path, notes=notes)
    assert row["runs"] == 2 and row["this_run"] == 90.5
    assert len(notes) == 3
    assert any(n.startswith(f"skipped {broken}: config.json: ") and "epochs" in n for n in notes)
    assert f"skipped {started}: no summary.json (the run has not started)" in notes
    assert any(n.startswith(f"{tmp_path / 'digits'}: not a paper preset run") for n in notes)
    assert find_runs([sweep, sweep / "seed=0" / "run"]) == find_runs(sweep)  # counted once


def test_ambiguous_runs_are_noted(tmp_path: Path) -> None:
    make_run(tmp_path / "k4", aux_depth=4)
    notes: list[str] = []
    [row] = table(tmp_path, notes=notes)
    assert row["changed"] == "aux_depth=4" and "belilovsky-k3-cifar10" in row["note"]
    assert any("ambiguous" in n for n in notes)


# -- output and the command ---------------------------------------------------------------------
def test_csv_is_written_and_reads_back_in_column_order(tmp_path: Path) -> None:
    make_run(tmp_path / "runs" / "a", seed=0, acc=0.9)
    make_run(tmp_path / "runs" / "b", seed=1, acc=0.91)
    make_run(tmp_path / "runs" / "c", seed=0, acc=0.5, epochs=1)
    out = tmp_path / "out" / "table.csv"
    write_csv(table(tmp_path / "runs"), out)
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == list(COLUMNS) and reader.fieldnames[:10] == HEADER
        rows = list(reader)
    assert [r["changed"] for r in rows] == ["", "epochs=1"]
    assert rows[0]["this_run"] == "90.50" and rows[0]["spread"] == "0.71"
    assert rows[0]["difference"] == "+0.10" and rows[1]["spread"] == ""
    assert rows[1]["difference"] == "-40.40" and rows[0]["paper_number"] == "90.4"
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_cli_prints_markdown_and_writes_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_run(tmp_path / "runs" / "a", acc=0.9)
    make_run(tmp_path / "runs" / "b", "quick")
    out = tmp_path / "table.csv"
    assert main(["reproduce", str(tmp_path / "runs"), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "| " + " | ".join(HEADER) + " |"
    assert lines[2].startswith(f"| {K2} | 90.4 | 90.00 |  | -0.40 | 1 | NVIDIA H200 |")
    assert "not a paper preset run" in captured.err
    assert out.read_text().splitlines()[0].startswith(",".join(HEADER))
    assert main(["reproduce", str(tmp_path / "runs")]) == 0  # without --out: only printed


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nowhere")
    assert main(["reproduce", missing]) == 2
    err = capsys.readouterr().err
    assert err == f"workbench: error: DIR: got {missing!r}; allowed: existing folders of runs\n"
    make_run(tmp_path / "digits", "quick")
    out = tmp_path / "table.csv"
    assert main(["reproduce", str(tmp_path), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and not out.exists()
    assert captured.err.splitlines()[-1].startswith("workbench reproduce: no paper preset runs")


# -- real runs ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seeds of the k=2 preset, CPU-sized, trained on the CIFAR-10 JPEG copy."""
    unpack = SHARED_DATA / "cifar10-jpeg" / "unpack.py"
    if not unpack.is_file():
        pytest.skip(f"real data not found at {unpack} (optional; see ../shared/data/README.md)")
    from workbench.training import run_experiment

    root = tmp_path_factory.mktemp("reproduce")
    subprocess.run([sys.executable, str(unpack), str(root / "data")], check=True)
    for seed in (0, 1):
        config = preset(
            K2,
            data_dir=str(root / "data"),
            allow_modified_copy=True,
            n_train=256,
            n_test=128,
            epochs=1,
            width=8,
            aux_width=8,
            batch_size=64,
            device="cpu",
            seed=seed,
            out=str(root / "runs" / f"seed{seed}"),
        )
        assert run_experiment(config)["status"] == "finished"
    return root / "runs"


def test_real_runs_make_one_changed_row(real_runs: Path) -> None:
    [row] = table(real_runs)
    summaries = [json.loads((p / "summary.json").read_text()) for p in find_runs(real_runs)]
    accs = [100 * s["final_test_acc"] for s in summaries]
    assert row["preset"] == K2 and row["runs"] == 2 and row["seeds"] == "0 1"
    assert row["this_run"] == round(sum(accs) / 2, 2)
    assert row["spread"] == round(abs(accs[0] - accs[1]) / 2**0.5, 2)
    assert row["difference"] == round(row["this_run"] - 90.4, 2)
    assert set(row["changed"].split(" ")) >= {
        "n_train=256",
        "n_test=128",
        "epochs=1",
        "width=8",
        "aux_width=8",
        "batch_size=64",
    }
    assert row["changed"].endswith("data=modified copy") and row["data_copy"] == "modified copy"
    assert row["device"] == "cpu" and row["status"] == "finished" and row["wall_time_s"] > 0


def test_real_runs_through_the_command(
    real_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "reproduction.csv"
    assert main(["reproduce", str(real_runs), "--out", str(out)]) == 0
    assert f"| {K2} (changed) | 90.4 |" in capsys.readouterr().out
    with open(out, newline="") as f:
        [row] = list(csv.DictReader(f))
    assert row["runs"] == "2" and row["status"] == "finished"
