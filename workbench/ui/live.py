"""Live plots: a training callback that draws a run as it goes, in plotly FigureWidgets.

    plots = LivePlots(n_modules=4)
    display(plots.widget)
    run_experiment(config, callbacks=[plots])

Redrawing is throttled (at most every `min_interval_s`, and always at the run's end) and each
redraw is one batched update per figure, so a fast run does not flood the browser. Redraws set
the traces' data in place (rebuilding a figure's layout costs ~100 ms of plotly validation),
and the interval grows with the cost of a redraw, so drawing takes at most ~5% of a run.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from workbench.events import EPOCH_END, MODULE_DONE, RUN_END, RUN_START
from workbench.records import read_metrics
from workbench.ui.plots import (
    accuracy_figure,
    depth_figure,
    depth_traces,
    loss_figure,
    module_series,
    module_traces,
)

DRAW_SHARE = 0.05  # at most this share of the wall time goes to redrawing


class LivePlots:
    """Per-module test accuracy per epoch, accuracy against depth, losses and a status line."""

    def __init__(self, n_modules: int = 0, min_interval_s: float = 0.5):
        self.min_interval_s = min_interval_s
        self.accuracy = go.FigureWidget(accuracy_figure(n_modules=n_modules))
        self.depth = go.FigureWidget(depth_figure())
        self.loss = go.FigureWidget(loss_figure(n_modules=n_modules))
        for fig in (self.accuracy, self.depth):  # side by side
            fig.layout.width = 560
        self.status = widgets.HTML("<i>no run yet</i>")
        self.widget = widgets.VBox(
            [self.status, widgets.HBox([self.accuracy, self.depth]), self.loss]
        )
        self.overlays: dict[str, list[float]] = {}  # finished runs kept on the depth plot
        self.label = "this run"
        self.rows: list[dict[str, Any]] = []
        self.latest: dict[str, Any] = {}
        self.last_draw = 0.0
        self.draw_cost = 0.0  # seconds the latest redraw took
        self.lock = threading.Lock()  # the training thread calls us; a button may redraw too

    # -- the callback ----------------------------------------------------------------------
    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == RUN_START:
            with self.lock:
                self.label = info["run_dir"]
                self.rows = read_metrics(info["run_dir"])  # a resumed run shows its past too
                self.latest = {}
                self._reset(info["n_modules"])
            self.set_status(
                f"started on <b>{info['device']}</b>: {info['method']}, "
                f"{info['n_modules']} modules, {info['total_epochs']} epochs in all"
            )
            self.draw()
        elif event == EPOCH_END:
            with self.lock:
                self.rows.extend(info["rows"])
                self.latest = info
            accs = ", ".join(f"{k}: {a:.3f}" for k, a in sorted(info["test_acc"].items()))
            self.set_status(
                f"<b>{info['device']}</b> · module {info['modules'][-1]}"
                f"{'' if len(info['modules']) == 1 else ' (all)'} · epoch {info['epoch']}"
                f" (lap {info['lap']}) · {info['images_per_s']:.0f} images/s · test acc {accs}"
            )
            if time.monotonic() - self.last_draw >= self.interval():
                self.draw()
        elif event == MODULE_DONE:
            pass  # the epoch that finished the module has already been drawn or queued
        elif event == RUN_END:
            summary = info["summary"]
            self.draw(final=summary.get("per_module_test_acc"))
            self.set_status(
                f"<b>{summary['status']}</b> after {summary.get('wall_time_s', 0):.1f} s · "
                f"final test acc {summary.get('final_test_acc') or 0:.3f} · "
                f"run folder <code>{html.escape(str(summary.get('run_dir')))}</code>"
            )

    # -- drawing ---------------------------------------------------------------------------
    def interval(self) -> float:
        """Seconds between redraws: min_interval_s, or longer when redrawing is slow."""
        return max(self.min_interval_s, self.draw_cost * (1 - DRAW_SHARE) / DRAW_SHARE)

    def set_status(self, text: str) -> None:
        self.status.value = text

    def _reset(self, n_modules: int) -> None:
        """One empty line per module (kept, and emptied by the next draw, if the count fits)."""
        for fig in (self.accuracy, self.loss):
            if len(fig.data) != n_modules:
                with fig.batch_update():
                    fig.data = ()
                    fig.add_traces(module_traces(n_modules))

    def current_depth_curve(self) -> list[float]:
        """The run's latest test accuracy of each module trained so far."""
        test = self.latest.get("test_acc", {})
        return [test[k] for k in sorted(test)]

    def draw(self, final: Sequence[float] | None = None) -> None:
        """Redraw every figure from the rows so far, one batched update each."""
        start = time.perf_counter()
        with self.lock:
            rows = list(self.rows)
            depth_curve = list(final) if final else self.current_depth_curve()
            self.last_draw = time.monotonic()
        for fig, split, key in ((self.accuracy, "test", "acc"), (self.loss, "train", "loss")):
            series = module_series(rows, split, key)
            with fig.batch_update():
                for k, trace in enumerate(fig.data, start=1):
                    xs, ys = series.get(k, ([], []))
                    if list(trace.x or ()) != xs or list(trace.y or ()) != ys:
                        trace.x, trace.y = xs, ys
        self._draw_depth({**self.overlays, self.label: depth_curve})
        self.draw_cost = time.perf_counter() - start

    def _draw_depth(self, curves: Mapping[str, Sequence[float]]) -> None:
        """Set the depth plot's lines in place; rebuild its traces only when the runs change."""
        names = [trace.name for trace in self.depth.data]
        if names != list(curves):
            with self.depth.batch_update():
                self.depth.data = ()
                self.depth.add_traces(depth_traces(curves))
            return
        with self.depth.batch_update():
            for trace, accs in zip(self.depth.data, curves.values()):
                xs, ys = list(range(1, len(accs) + 1)), list(accs)
                if list(trace.x or ()) != xs or list(trace.y or ()) != ys:
                    trace.x, trace.y = xs, ys

    def keep_on_depth_plot(self, label: str, per_module_acc: Sequence[float]) -> None:
        """Overlay a finished run's accuracy-against-depth curve on later runs' depth plot."""
        self.overlays[label] = list(per_module_acc)
        self._draw_depth({**self.overlays})

    def clear_overlays(self) -> None:
        self.overlays.clear()
        self._draw_depth({})
