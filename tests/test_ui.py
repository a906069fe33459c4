"""The notebook UI's Python side: live plots as a callback, and the panel's form and thread.

The browser test (test_browser.py) shows the same panel working in a real JupyterLab.
"""

from __future__ import annotations

import json
import time

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
