"""Live plots: a training callback that draws a run as it goes, in plotly FigureWidgets.

    plots = LivePlots(n_modules=4)
    display(plots.widget)
    run_experiment(config, callbacks=[plots])

A progress bar moves inside each epoch (PROGRESS events: the step, images/s, the time left),
so a run shows life within seconds of Start. Redrawing is throttled (at most every
`min_interval_s`, and always at the run's end) and each redraw is one batched update per
figure; traces' data are set in place (rebuilding a layout costs ~100 ms of plotly
validation), and the interval grows with the cost of a redraw, so drawing takes at most ~5%
of a run. Finished runs kept on the depth plot are labelled by the fields that differ between
them (workbench.runs.run_labels) and keep their colour for the panel's life.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from workbench.events import EPOCH_END, PROGRESS, RUN_END, RUN_START, format_duration
from workbench.records import Status, read_metrics
from workbench.runs import run_labels
from workbench.ui.plots import (
    COLORS,
    accuracy_figure,
    accuracy_range,
    depth_figure,
    depth_traces,
    epoch_axis_title,
    integer_ticks,
    loss_figure,
    module_series,
    module_traces,
)

DRAW_SHARE = 0.05  # at most this share of the wall time goes to redrawing


def format_acc(value: float | None) -> str:
    """An accuracy for the status line; '-' where there is none (a run stopped early)."""
    return "-" if value is None else f"{value:.3f}"


class LivePlots:
    """Per-module test accuracy per epoch, accuracy against depth (with kept runs), training
    losses, a progress bar inside each epoch and a status line."""

    def __init__(self, n_modules: int = 0, min_interval_s: float = 0.5):
        self.min_interval_s = min_interval_s
        self.accuracy = go.FigureWidget(accuracy_figure(n_modules=n_modules))
        self.depth = go.FigureWidget(depth_figure())
        self.loss = go.FigureWidget(loss_figure(n_modules=n_modules))
        for fig in (self.accuracy, self.depth):  # side by side
            fig.layout.width = 520
        self.status = widgets.HTML("<i>no run yet</i>")
        self.progress = widgets.IntProgress(
            value=0, min=0, max=1, bar_style="info", layout=widgets.Layout(width="300px")
        )
        self.progress_text = widgets.HTML()
        self.full_range = widgets.Checkbox(
            value=False,
            indent=False,
            description="accuracy axes 0-1",
            tooltip="off: the accuracy axes fit the data, so 0.955 and 0.971 look different",
        )
        self.full_range.observe(lambda _: self.draw(), names="value")
        self.widget = widgets.VBox(
            [
                self.status,
                widgets.HBox([self.progress, self.progress_text, self.full_range]),
                widgets.HBox([self.accuracy, self.depth]),
                self.loss,
            ]
        )
        # finished runs shown on the depth plot: run folder -> config, accuracies, probes
        self.kept: dict[str, dict[str, Any]] = {}
        self.colors: dict[str, str] = {}  # run folder -> colour, for the panel's life
        self.run_dir: str | None = None
        self.config: dict[str, Any] = {}
        self.final: list[float] | None = None  # the run's final per-module accuracies
        self.probes: list[float] = []
        self.total_epochs = 0
        self.rows: list[dict[str, Any]] = []
        self.latest: dict[str, Any] = {}
        self.last_draw = 0.0
        self.draw_cost = 0.0  # seconds the latest redraw took
        self.lock = threading.Lock()  # the training thread calls us; a button may redraw too

    # -- the callback ----------------------------------------------------------------------
    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == RUN_START:
            self.start_run(info)
        elif event == PROGRESS:
            self.show_progress(info)
        elif event == EPOCH_END:
            with self.lock:
                self.rows.extend(info["rows"])
                self.latest = info
            accs = ", ".join(f"{k}: {a:.3f}" for k, a in sorted(info["test_acc"].items()))
            modules = info["modules"]
            which = f"module {modules[0]}" if len(modules) == 1 else f"modules 1-{modules[-1]}"
            self.set_status(
                f"<b>running</b> on {info['device']} · {which} · epoch {info['epoch']}"
                f" · {info['images_per_s']:.0f} images/s · test acc {accs}"
            )
            if time.monotonic() - self.last_draw >= self.interval():
                self.draw()
        elif event == RUN_END:
            self.end_run(info["summary"])

    def start_run(self, info: dict[str, Any]) -> None:
        """A new run: empty lines per module, axes reset, the x axis named for its method."""
        with self.lock:
            self.run_dir = info["run_dir"]
            self.config = dict(info.get("config") or {})
            self.rows = read_metrics(info["run_dir"])  # a resumed run shows its past too
            self.latest, self.final, self.probes = {}, None, []
            self.total_epochs = info["total_epochs"]
        self.color_of(info["run_dir"])
        title = epoch_axis_title(info["method"])
        for fig in (self.accuracy, self.loss):
            with fig.batch_update():
                if len(fig.data) != info["n_modules"]:
                    fig.data = ()
                    fig.add_traces(module_traces(info["n_modules"]))
                fig.layout.xaxis.title.text = title
                fig.layout.xaxis.range = None  # a new run does not keep the last one's axes
                fig.layout.xaxis.autorange = True
        self.progress.value, self.progress.max, self.progress.bar_style = 0, 1, "info"
        self.progress_text.value = "starting: loading data and the first steps..."
        done = f", {info['epochs_done']} done before (resumed)" if info["epochs_done"] else ""
        self.set_status(
            f"<b>started</b> on {info['device']}: {info['method']}, {info['n_modules']} modules,"
            f" {info['total_epochs']} epochs in all{done}"
        )
        self.draw()

    def show_progress(self, info: dict[str, Any]) -> None:
        """The bar over the epoch's steps, images/s and the run's time left."""
        self.progress.max = info["steps"]
        self.progress.value = info["step"]
        modules = info["modules"]
        which = f"module {modules[0]}" if len(modules) == 1 else f"modules 1-{modules[-1]}"
        self.progress_text.value = (
            f"epoch {info['global_epoch']}/{self.total_epochs} · {which}"
            f" · step {info['step']}/{info['steps']} · {info['images_per_s']:.0f} images/s · about "
            f"{format_duration(info['seconds_left'])} left"
        )

    def end_run(self, summary: dict[str, Any]) -> None:
        with self.lock:
            self.final = list(summary.get("per_module_test_acc") or []) or None
            self.probes = list(summary.get("per_module_probe_acc") or [])
        self.draw()
        status = summary.get("status", "?")
        self.progress.bar_style = {Status.FINISHED: "success", Status.FAILED: "danger"}.get(
            status, "warning"
        )
        if status == Status.FINISHED:
            self.progress.value = self.progress.max
        self.progress_text.value = ""
        self.set_status(
            f"<b>{status}</b> after {summary.get('wall_time_s') or 0:.1f} s · final test acc "
            f"{format_acc(summary.get('final_test_acc'))} · run folder "
            f"<code>{html.escape(str(summary.get('run_dir')))}</code>"
        )

    # -- drawing ---------------------------------------------------------------------------
    def interval(self) -> float:
        """Seconds between redraws: min_interval_s, or longer when redrawing is slow."""
        return max(self.min_interval_s, self.draw_cost * (1 - DRAW_SHARE) / DRAW_SHARE)

    def set_status(self, text: str) -> None:
        self.status.value = text

    def color_of(self, run_dir: str) -> str:
        """A run's colour: the next of the palette when first seen, then always the same."""
        if run_dir not in self.colors:
            self.colors[run_dir] = COLORS[len(self.colors) % len(COLORS)]
        return self.colors[run_dir]

    def current_depth_curve(self) -> list[float]:
        """The run's latest test accuracy of each module trained so far."""
        if self.final:
            return list(self.final)
        test = self.latest.get("test_acc", {})
        return [test[k] for k in sorted(test)]

    def draw(self) -> None:
        """Redraw every figure from the rows so far, one batched update each."""
        start = time.perf_counter()
        with self.lock:
            rows = list(self.rows)
            self.last_draw = time.monotonic()
        full = self.full_range.value
        for fig, split, key in ((self.accuracy, "test", "acc"), (self.loss, "train", "loss")):
            series = module_series(rows, split, key)
            last = max((x for xs, _ in series.values() for x in xs), default=1)
            with fig.batch_update():
                for k, trace in enumerate(fig.data, start=1):
                    xs, ys = series.get(k, ([], []))
                    if list(trace.x or ()) != xs or list(trace.y or ()) != ys:
                        trace.x, trace.y = xs, ys
                fig.update_xaxes(**integer_ticks(last))
                if key == "acc":
                    values = [v for _, ys in series.values() for v in ys]
                    fig.update_yaxes(range=accuracy_range(values, full))
        self.draw_depth()
        self.draw_cost = time.perf_counter() - start

    def depth_runs(self) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, str]]:
        """(label -> accuracies, label -> probes, label -> colour) of the kept runs and this
        one, labelled by the fields that differ between them."""
        runs = {d: dict(run) for d, run in self.kept.items()}
        if self.run_dir is not None and self.run_dir not in runs:
            curve = self.current_depth_curve()
            runs[self.run_dir] = {"config": self.config, "accs": curve, "probes": self.probes}
        labels = run_labels([r["config"] for r in runs.values()], list(runs))
        curves = {lab: r["accs"] for lab, r in zip(labels, runs.values())}
        probes = {lab: r["probes"] for lab, r in zip(labels, runs.values()) if r["probes"]}
        colors = {lab: self.color_of(d) for lab, d in zip(labels, runs)}
        return curves, probes, colors

    def draw_depth(self) -> None:
        """Set the depth plot's lines in place; rebuild its traces only when the runs change."""
        curves, probes, colors = self.depth_runs()
        traces = depth_traces(curves, probes, colors)
        values = [v for t in traces for v in t.y]
        with self.depth.batch_update():
            if [t.name for t in self.depth.data] != [t.name for t in traces]:
                self.depth.data = ()
                self.depth.add_traces(traces)
            else:
                for old, new in zip(self.depth.data, traces):
                    if list(old.y or ()) != list(new.y) or list(old.x or ()) != list(new.x):
                        old.x, old.y = new.x, new.y
            longest = max((len(t.x) for t in traces), default=1)
            self.depth.update_xaxes(**integer_ticks(longest))
            self.depth.update_yaxes(range=accuracy_range(values, self.full_range.value))

    def keep(
        self,
        run_dir: str,
        config: dict[str, Any],
        per_module_acc: Sequence[float],
        probes: Sequence[float] = (),
    ) -> None:
        """Show a finished run's accuracy against depth on this and later runs' depth plots."""
        self.kept[str(run_dir)] = {
            "config": dict(config),
            "accs": list(per_module_acc),
            "probes": list(probes),
        }
        self.color_of(str(run_dir))
        self.draw_depth()

    def clear_overlays(self) -> None:
        self.kept.clear()
        self.draw_depth()
