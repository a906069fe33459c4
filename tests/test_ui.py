"""The notebook UI's Python side: live plots as a callback, and the panel's form and thread.

The browser test (test_browser.py) shows the same panel working in a real JupyterLab.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from conftest import tiny

from workbench import Config, run_experiment
from workbench.events import EPOCH_END
from workbench.presets import PRESETS
from workbench.ui import LivePlots, WorkbenchPanel


def test_live_plots_draw_every_module_and_the_depth_curve(tmp_path):
    config = tiny(tmp_path, n_modules=3, epochs=2)
    plots = LivePlots(min_interval_s=0)
    summary = run_experiment(config, callbacks=[plots])
    assert [len(trace.x) for trace in plots.accuracy.data] == [2, 2, 2]
    assert [len(trace.x) for trace in plots.loss.data] == [2, 2, 2]
    (depth,) = plots.depth.data
    assert list(depth.y) == summary["per_module_test_acc"]
    assert "finished" in plots.status.value


def test_live_plots_are_throttled_and_batched(tmp_path, monkeypatch):
    """With a long interval only the run's start and end redraw; the end shows every epoch."""
    draws: list[int] = []
    plots = LivePlots(min_interval_s=3600)
    original = plots.draw
    monkeypatch.setattr(plots, "draw", lambda **kw: (draws.append(len(plots.rows)), original(**kw)))
    epochs: list[int] = []
    run_experiment(
        tiny(tmp_path, n_modules=3, epochs=1),
        callbacks=[plots, lambda e, i: epochs.append(1) if e == EPOCH_END else None],
    )
    assert len(epochs) == 3
    assert draws == [0, 6]  # start (no rows yet) and end (3 epochs x train/test rows)
    assert [len(trace.x) for trace in plots.accuracy.data] == [1, 1, 1]


def test_panel_form_builds_the_config_and_refuses_bad_values(tmp_path):
    panel = WorkbenchPanel(n_modules=3, aux_depth=1, out=str(tmp_path / "r"))
    assert panel.config() == Config(n_modules=3, aux_depth=1, out=str(tmp_path / "r"))
    assert set(panel.inputs) == set(Config().to_dict())  # every field has a widget
    panel.inputs["tau"].value = -1.0
    panel.start()
    assert not panel.running
    assert "tau: got -1.0" in panel.message.value
    assert not (tmp_path / "r").exists()


def test_panel_presets_fill_the_form():
    panel = WorkbenchPanel(epochs=7)
    panel.preset.value = "belilovsky-k1-cifar10"
    config = panel.config()
    assert config == Config(**PRESETS["belilovsky-k1-cifar10"].values)
    assert config.epochs == 50 and config.schedule == "3,4"


def test_panel_trains_in_a_thread_and_stop_leaves_a_stopped_run(tmp_path):
    out = tmp_path / "run"
    panel = WorkbenchPanel(
        n_train=256,
        n_test=128,
        width=8,
        batch_size=32,
        n_modules=4,
        epochs=20,
        device="cpu",
        out=str(out),
    )
    panel.start()
    assert panel.running and panel.start_button.disabled and not panel.stop_button.disabled
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    panel.stop()
    panel.thread.join(timeout=60)
    assert not panel.running and not panel.start_button.disabled
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped" == panel.summary["status"]
    assert summary["modules_finished"] < 4


def _wait(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


SMALL = dict(n_train=512, n_test=128, width=8, batch_size=32, device="cpu")


def test_start_on_a_stopped_config_resumes_it_and_a_changed_one_starts_anew(tmp_path):
    """Start, Stop, Start on one config: one run folder, which ends finished."""
    root = tmp_path / "runs"
    panel = WorkbenchPanel(runs_root=str(root), n_modules=4, epochs=3, **SMALL)
    stopper = panel.stop_flag  # replaced by start(): stop the first run after its first epoch
    panel.start()
    assert "new run" in panel.message.value
    _wait(lambda: panel.plots.rows)  # the first epoch's rows
    panel.stop()
    panel.thread.join(timeout=60)
    assert stopper is not panel.stop_flag
    assert panel.summary["status"] == "stopped"
    (folder,) = root.iterdir()

    panel.start()
    assert "resuming" in panel.message.value and folder.name in panel.message.value
    panel.thread.join(timeout=120)
    assert panel.summary["status"] == "finished"
    assert list(root.iterdir()) == [folder]
    assert json.loads((folder / "summary.json").read_text())["status"] == "finished"

    panel.start()  # finished: shown, not run again
    assert "already <b>finished</b>" in panel.message.value and not panel.running

    panel.inputs["aux_depth"].value = 1  # another config: another folder
    panel.start()
    assert "new run" in panel.message.value
    panel.thread.join(timeout=120)
    assert len(list(root.iterdir())) == 2
    # both on the depth plot, told apart by the field that differs, in their own colours
    names = [t.name for t in panel.plots.depth.data]
    assert sorted(names) == ["aux_depth=1", "aux_depth=2"]
    assert len({t.line.color for t in panel.plots.depth.data}) == 2


def test_runs_browser_overlays_exports_and_deletes_after_a_restart(tmp_path):
    root = tmp_path / "runs"
    for depth in (1, 3):
        run_experiment(tiny(tmp_path, out=str(root / f"k{depth}"), aux_depth=depth, n_modules=2))
    panel = WorkbenchPanel(runs_root=str(root))  # a new kernel: everything comes from disk
    browser = panel.browser
    assert len(browser.select.options) == 2
    assert "aux_depth=1" in browser.table.value and "aux_depth=3" in browser.table.value
    browser.select.value = tuple(value for _, value in browser.select.options)
    browser.overlay_selected()
    assert sorted(t.name for t in panel.plots.depth.data) == ["aux_depth=1", "aux_depth=3"]

    csv_path = browser.export_csv()
    text = csv_path.read_text()
    assert text.splitlines()[0].startswith("run_dir,label,status,final_test_acc")
    assert "aux_depth=3" in text and "acc_module_2" in text

    saved = browser.save_figures()
    assert {p.name for p in saved} >= {"accuracy.html", "depth.html", "loss.html"}

    browser.select.value = (str(root / "k1"),)
    browser.delete_selected()  # the first press asks
    assert (root / "k1").exists() and "again" in browser.message.value
    browser.delete_selected()
    assert not (root / "k1").exists()
    assert [value for _, value in browser.select.options] == [str(root / "k3")]
    assert [t.name for t in panel.plots.depth.data] == ["greedy-cnn sequential"]


def test_runs_browser_lists_an_unreadable_run_with_its_reason_beside_the_others(tmp_path):
    from workbench.ui.runs_browser import RunsBrowser

    root = tmp_path / "runs"
    for depth in (1, 3):
        run_experiment(tiny(tmp_path, out=str(root / f"k{depth}"), aux_depth=depth, n_modules=2))
    shutil.copytree(root / "k3", root / "bad")  # a copy gone wrong: its summary cut short
    (root / "bad" / "summary.json").write_text('{"status": "finished", "final_te')
    reason = "summary.json: not valid JSON (Unterminated string starting at: line 1 column 24)"
    browser = RunsBrowser(LivePlots(), root=str(root))
    rows = {Path(r["run_dir"]).name: r for r in browser.rows}
    assert rows["bad"]["status"] == "unreadable" and rows["bad"]["error"] == reason
    assert rows["bad"]["label"] == "bad" and rows["bad"]["per_module_test_acc"] == []
    # the others as without it: labelled by what differs between them (not tied with the copy)
    assert [rows[k]["label"] for k in ("k1", "k3")] == ["aux_depth=1", "aux_depth=3"]
    assert [rows[k]["status"] for k in ("k1", "k3")] == ["finished", "finished"]
    assert all(len(rows[k]["per_module_test_acc"]) == 2 and rows[k]["error"] is None
               for k in ("k1", "k3"))  # fmt: skip
    texts = [text for text, _ in browser.select.options]
    assert len(texts) == 3 and f"bad · unreadable: {reason} · final - · bad" in texts
    assert f"unreadable: {reason}" in browser.table.value

    browser.select.value = tuple(value for _, value in browser.select.options)
    browser.overlay_selected()
    assert sorted(t.name for t in browser.plots.depth.data) == ["aux_depth=1", "aux_depth=3"]
    assert "2 run(s) on the depth plot (1 unreadable left out)" in browser.message.value
    assert reason in browser.export_csv().read_text()

    browser.select.value = (str(root / "bad"),)
    browser.delete_selected()
    browser.delete_selected()  # an unreadable run can be deleted like any other
    assert not (root / "bad").exists() and len(browser.rows) == 2


def test_every_field_has_a_short_label_and_its_help_as_tooltip():
    panel = WorkbenchPanel()
    for name, widget in panel.inputs.items():
        assert widget.tooltip and widget.tooltip != "null" and len(widget.tooltip) > len(name) + 5
        assert widget.tooltip.startswith(f"{name}: ")
        assert len(widget.description) <= 20
    assert panel.inputs["aux_depth"].description == "aux depth (k)"
    assert "Belilovsky" in panel.inputs["aux_depth"].tooltip


def test_a_config_far_too_big_asks_before_it_starts(tmp_path):
    panel = WorkbenchPanel(
        runs_root=str(tmp_path / "runs"), dataset="mnist", data_dir=str(tmp_path), epochs=300,
        arch="vgg11", device="cpu",
    )  # fmt: skip
    panel.start()
    assert not panel.running
    assert "would take about" in panel.message.value and "Start</b> again" in panel.message.value


def test_stopped_runs_show_missing_accuracies_as_dashes(tmp_path):
    plots = LivePlots()
    plots.end_run({"status": "stopped", "wall_time_s": 1.0, "run_dir": "r"})
    assert "final test acc -" in plots.status.value and "0.000" not in plots.status.value


def test_accuracy_axes_fit_the_data_unless_asked_for_0_to_1(tmp_path):
    config = tiny(tmp_path, n_modules=2, epochs=3, method="parallel")
    plots = LivePlots(min_interval_s=0)
    run_experiment(config, callbacks=[plots])
    low, high = plots.accuracy.layout.yaxis.range
    accs = [y for trace in plots.accuracy.data for y in trace.y]
    assert 0 < low <= min(accs) and max(accs) <= high < 1.02 or high == 1.02
    assert high - low < 1
    assert plots.accuracy.layout.xaxis.title.text == "epoch (all modules at once)"
    assert plots.accuracy.layout.xaxis.dtick == 1 and plots.accuracy.layout.xaxis.tickformat == "d"
    plots.full_range.value = True
    assert list(plots.accuracy.layout.yaxis.range) == [0, 1.02]
