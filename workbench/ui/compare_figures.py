"""Figures that set runs side by side, one line per run: what notebooks/compare.ipynb shows.

Per epoch: the test accuracy and the training loss of each run's last module (the net's output),
against that module's own epochs, so a greedy run (whose last module trains last) and a
parallel one share an x axis. Against depth: workbench.ui.plots.depth_figure. A run keeps its
colour in every figure (`run_colors`), and legends sit below the plots: labels can be long.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from workbench.ui.plots import COLORS, accuracy_range, integer_ticks

# (epochs, values, module): a run's last recorded module's curve
Curve = tuple[list[int], list[float], int]


def run_colors(labels: Iterable[str]) -> dict[str, str]:
    """{label: colour}, in the order the runs are listed, the same in every figure."""
    return {label: COLORS[i % len(COLORS)] for i, label in enumerate(dict.fromkeys(labels))}


def last_module_curve(rows: Sequence[Mapping[str, Any]], split: str, key: str) -> Curve | None:
    """The deepest module's `key` on `split` against its own epoch (the row's `epoch`, which
    counts across laps); None for a run without such rows yet."""
    rows = [r for r in rows if r.get("split") == split and r.get(key) is not None]
    if not rows:
        return None
    module = max(r["module"] for r in rows)
    mine = sorted((r for r in rows if r["module"] == module), key=lambda r: r["global_epoch"])
    return [r["epoch"] for r in mine], [float(r[key]) for r in mine], module


def legend_below(fig: go.Figure) -> go.Figure:
    """The legend under the plot, so long run labels do not squeeze it."""
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.22), height=420)
    return fig


def recolor(fig: go.Figure, colors: Mapping[str, str]) -> go.Figure:
    """Give each trace its run's colour (a trace named '<label>' or '<label>: <kind>')."""
    for trace in fig.data:
        name = str(trace.name or "")
        label = name if name in colors else name.rsplit(": ", 1)[0]
        if label in colors:
            trace.line.color = colors[label]
    return fig


def epoch_figure(
    curves: Mapping[str, Curve | None],
    title: str,
    y_title: str,
    accuracy: bool,
    colors: Mapping[str, str] | None = None,
) -> go.Figure:
    """One line per run of a last-module curve against its epoch (runs without one left out)."""
    colors = dict(colors or run_colors(curves))
    fig = go.Figure()
    values: list[float] = []
    largest = 1
    for label, curve in curves.items():
        if curve is None:
            continue
        xs, ys, module = curve
        values += ys
        largest = max([largest, *xs])
        fig.add_scatter(
            x=xs,
            y=ys,
            mode="lines+markers",
            name=label,
            line=dict(color=colors.get(label)),
            hovertemplate=f"module {module}, epoch %{{x}}: %{{y:.4g}}<extra>{label}</extra>",
        )
    fig.update_xaxes(**integer_ticks(largest))
    if accuracy:
        fig.update_yaxes(range=accuracy_range(values))
    fig.update_layout(
        title=title,
        xaxis_title="epoch of the last module",
        yaxis_title=y_title,
        template="plotly_white",
        margin=dict(l=50, r=20, t=50, b=45),
    )
    return legend_below(fig)


def epoch_accuracy_figure(
    metrics: Mapping[str, Sequence[Mapping[str, Any]]], colors: Mapping[str, str] | None = None
) -> go.Figure:
    """Each run's last module's test accuracy per epoch, one line per run ({label: rows})."""
    curves = {label: last_module_curve(rows, "test", "acc") for label, rows in metrics.items()}
    return epoch_figure(
        curves, "Test accuracy of the last module per epoch", "test accuracy", True, colors
    )


def epoch_loss_figure(
    metrics: Mapping[str, Sequence[Mapping[str, Any]]], colors: Mapping[str, str] | None = None
) -> go.Figure:
    """Each run's last module's training loss per epoch, one line per run ({label: rows})."""
    curves = {label: last_module_curve(rows, "train", "loss") for label, rows in metrics.items()}
    return epoch_figure(
        curves, "Training loss of the last module per epoch", "training loss", False, colors
    )
