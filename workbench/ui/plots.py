"""The workbench's figures, built from metric rows or run folders (plotly).

The same builders serve the live panel (wrapped in FigureWidgets and updated in place), the batch
notebook (static figures saved as HTML) and the comparison notebook.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.colors
import plotly.graph_objects as go
import plotly.io

from workbench.records import read_metrics
from workbench.runs import run_labels

ACC_RANGE = [0, 1.02]
COLORS = plotly.colors.qualitative.Plotly  # the template's own order
# what one step of the x axis of a per-epoch figure is, per method
EPOCH_AXIS = {
    "sequential": "epoch (module after module)",
    "multilap": "epoch (laps: every module in turn)",
    "parallel": "epoch (all modules at once)",
    "end-to-end": "epoch (the whole net)",
}


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        template="plotly_white",
        height=340,
        margin=dict(l=50, r=20, t=50, b=45),
        legend=dict(orientation="v"),
    )
    return fig


def accuracy_range(values: Iterable[float | None], full: bool = False) -> list[float]:
    """A y range for accuracies: fitted to the values with a margin (so 0.955 and 0.971 look
    different), or 0-1 when `full` or when there are none."""
    present = [v for v in values if v is not None]
    if full or not present:
        return list(ACC_RANGE)
    low, high = min(present), max(present)
    pad = max(0.01, 0.08 * (high - low))
    return [max(0.0, low - pad), min(1.02, high + pad)]


def integer_ticks(largest: int) -> dict[str, Any]:
    """x-axis settings for epochs or modules: whole numbers only, about ten ticks at most."""
    return dict(tick0=1, dtick=max(1, math.ceil(largest / 10)), tickformat="d")


def epoch_axis_title(method: str | None) -> str:
    return EPOCH_AXIS.get(method or "", "epoch")


def module_series(
    rows: Iterable[Mapping[str, Any]], split: str, key: str
) -> dict[int, tuple[list[int], list[float]]]:
    """{module: (global epochs, values)} for one split (train, test) and metric (acc, loss)."""
    series: dict[int, tuple[list[int], list[float]]] = {}
    for row in rows:
        if row["split"] == split:
            xs, ys = series.setdefault(row["module"], ([], []))
            xs.append(row["global_epoch"])
            ys.append(row[key])
    return dict(sorted(series.items()))


def module_traces(
    n_modules: int, series: Mapping[int, tuple[list[int], list[float]]] | None = None
) -> list[go.Scatter]:
    """One line per module (empty where `series` has none)."""
    series = series or {}
    return [
        go.Scatter(x=xs, y=ys, mode="lines+markers", name=f"module {k}")
        for k in range(1, max([n_modules, *series]) + 1)
        for xs, ys in [series.get(k, ([], []))]
    ]


def _per_module_figure(
    rows: Sequence[Mapping[str, Any]], n_modules: int, split: str, key: str
) -> go.Figure:
    """One line per module of `key` on `split` against the epoch (empty lines for the rest)."""
    series = module_series(rows, split, key)
    fig = go.Figure(module_traces(n_modules, series))
    last = max((x for xs, _ in series.values() for x in xs), default=1)
    fig.update_xaxes(**integer_ticks(last))
    return fig


def accuracy_figure(
    rows: Sequence[Mapping[str, Any]] = (),
    n_modules: int = 0,
    method: str | None = None,
    full_range: bool = False,
) -> go.Figure:
    """Each module's test accuracy per epoch: one line per module, the y axis fitted."""
    fig = _per_module_figure(rows, n_modules, "test", "acc")
    values = [r["acc"] for r in rows if r.get("split") == "test"]
    fig.update_yaxes(range=accuracy_range(values, full_range))
    return _layout(fig, "Test accuracy of each module", epoch_axis_title(method), "accuracy")


def loss_figure(
    rows: Sequence[Mapping[str, Any]] = (), n_modules: int = 0, method: str | None = None
) -> go.Figure:
    """Each module's training loss per epoch."""
    fig = _per_module_figure(rows, n_modules, "train", "loss")
    return _layout(fig, "Training loss of each module", epoch_axis_title(method), "loss")


def depth_traces(
    runs: Mapping[str, Sequence[float]] | None = None,
    probes: Mapping[str, Sequence[float]] | None = None,
    colors: Mapping[str, str] | None = None,
) -> list[go.Scatter]:
    """One line per run of test accuracy against module depth; a run's linear probes (if
    any) dashed in the same colour, named '<run>: probe'."""
    traces = []
    probes, colors = probes or {}, colors or {}
    for i, (label, accs) in enumerate((runs or {}).items()):
        color = colors.get(label, COLORS[i % len(COLORS)])
        xs = list(range(1, len(accs) + 1))
        line = dict(color=color)
        traces.append(go.Scatter(x=xs, y=list(accs), mode="lines+markers", name=label, line=line))
        if probes.get(label):
            ys = list(probes[label])
            traces.append(
                go.Scatter(
                    x=list(range(1, len(ys) + 1)),
                    y=ys,
                    mode="lines+markers",
                    name=f"{label}: probe",
                    line=dict(color=color, dash="dash"),
                )
            )
    return traces


def depth_figure(
    runs: Mapping[str, Sequence[float]] | None = None,
    probes: Mapping[str, Sequence[float]] | None = None,
    full_range: bool = False,
) -> go.Figure:
    """Final test accuracy against module depth, one line per run: the papers' figure."""
    fig = go.Figure(depth_traces(runs, probes))
    fig.update_xaxes(**integer_ticks(max([len(a) for a in (runs or {}).values()] + [1])))
    values = [v for curves in (runs or {}, probes or {}) for a in curves.values() for v in a]
    fig.update_yaxes(range=accuracy_range(values, full_range))
    _layout(fig, "Test accuracy against depth", "module", "accuracy")
    # the legend below the plot: run labels can be long, and beside it they squeeze the plot
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.22), height=400)
    return fig


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary, metric rows) of a run folder; an empty summary if it has none yet."""
    path = Path(run_dir)
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return summary, read_metrics(path)


def run_figures(run_dir: str | Path) -> dict[str, go.Figure]:
    """The three figures of one run folder, by file stem."""
    summary, rows = load_run(run_dir)
    n = summary.get("n_modules", 0)
    config_path = Path(run_dir) / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    name = run_labels([config])[0] if config else Path(run_dir).name
    probes = {name: summary["per_module_probe_acc"]} if summary.get("per_module_probe_acc") else {}
    method = config.get("method")
    return {
        "accuracy": accuracy_figure(rows, n, method),
        "depth": depth_figure({name: summary.get("per_module_test_acc", [])}, probes),
        "loss": loss_figure(rows, n, method),
    }


def save_figures(
    figures: Mapping[str, go.Figure], folder: str | Path, png: bool = True
) -> list[Path]:
    """Write each figure as HTML, and as PNG where a browser can render it.

    The HTML loads one shared plotly-<version>.min.js by a relative path (workbench.ui.plotly_js:
    the nearest one above, or one written into the folder holding the runs), not 4.8 MB each.
    PNG export (kaleido) needs a Chromium on the machine; without one the HTML is still written.
    """
    from workbench.ui.plotly_js import plotly_js_src

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    src = plotly_js_src(folder) if figures else ""
    for name, fig in figures.items():
        html = folder / f"{name}.html"
        fig.write_html(html, include_plotlyjs=src)  # a <script src> to the shared copy
        written.append(html)
    if png and figures:
        pngs = [folder / f"{name}.png" for name in figures]
        try:  # all in one call: kaleido starts its browser once, not once per figure
            plotly.io.write_images(list(figures.values()), pngs)
            written += pngs
        except Exception:  # no kaleido or no browser: HTML only
            pass
    return written


def separability_figure(
    test_acc: Mapping[str, Sequence[float]], probe_acc: Mapping[str, Sequence[float]]
) -> go.Figure:
    """Per module: the aux head's test accuracy (solid) and a linear probe's (dashed), per run.

    The gap between the lines of one run shows how much of a module's accuracy its auxiliary
    head adds on top of what is linearly separable in its features (Ma et al.).
    """
    fig = go.Figure()
    colors = plotly.colors.qualitative.Plotly  # the template's own order, fixed per run
    for i, label in enumerate(dict.fromkeys([*test_acc, *probe_acc])):
        color = colors[i % len(colors)]
        for values, kind, dash in ((test_acc, "aux head", "solid"), (probe_acc, "probe", "dash")):
            accs = list(values.get(label, []))
            if accs:
                fig.add_scatter(
                    x=list(range(1, len(accs) + 1)),
                    y=accs,
                    mode="lines+markers",
                    name=f"{label}: {kind}",
                    line=dict(color=color, dash=dash),
                )
    fig.update_xaxes(dtick=1)
    fig.update_yaxes(range=ACC_RANGE)
    return _layout(fig, "Aux head vs linear probe accuracy against depth", "module", "accuracy")


def depth_band_figure(
    summary: Sequence[Mapping[str, Any]],
    metric: str = "test_acc",
    title: str = "",
    reference: Sequence[Mapping[str, Any]] | None = None,
) -> go.Figure:
    """Mean `metric` against module depth, one line per variant, error bars = sd over seeds.

    `summary` rows hold variant, module, `<metric>_mean` and `<metric>_sd` (Series.summary()).
    `reference` rows (a full-scale run's summary) are drawn dashed, named "full scale: ...".
    The y axis fits the data, so differences of a point are visible.
    """
    fig = go.Figure()
    lows, highs = [], []
    for rows_of, prefix, dash in ((summary, "", None), (reference or [], "full scale: ", "dash")):
        for variant in dict.fromkeys(r["variant"] for r in rows_of):
            rows = [r for r in rows_of if r["variant"] == variant and f"{metric}_mean" in r]
            if not rows:
                continue
            means = [r[f"{metric}_mean"] for r in rows]
            sds = [r.get(f"{metric}_sd", 0.0) for r in rows]
            lows += [m - s for m, s in zip(means, sds)]
            highs += [m + s for m, s in zip(means, sds)]
            fig.add_scatter(
                x=[r["module"] for r in rows],
                y=means,
                error_y=dict(type="data", array=sds, visible=True),
                mode="lines+markers",
                line=dict(dash=dash),
                name=f"{prefix}{variant} (n={rows[0].get('seeds', '?')})",
            )
    fig.update_xaxes(dtick=1)
    if lows:
        pad = 0.05 * max(0.05, max(highs) - min(lows))
        fig.update_yaxes(range=[max(0.0, min(lows) - pad), min(1.02, max(highs) + pad)])
    return _layout(fig, title or "Test accuracy against depth", "module", "mean accuracy (+- sd)")


def budget_band_figure(
    curves: Sequence[Mapping[str, Any]], title: str = "", x_title: str = "training budget (epochs)"
) -> go.Figure:
    """Mean test accuracy of each variant's network against its training budget, with a band
    of one sd over the seeds. `curves` rows hold variant, epoch, test_acc_mean, test_acc_sd
    (Series.curve_summary())."""
    fig = go.Figure()
    for i, variant in enumerate(dict.fromkeys(r["variant"] for r in curves)):
        rows = [r for r in curves if r["variant"] == variant]
        x = [r["epoch"] for r in rows]
        mean = [r["test_acc_mean"] for r in rows]
        sd = [r.get("test_acc_sd", 0.0) for r in rows]
        color = COLORS[i % len(COLORS)]
        fig.add_scatter(
            x=x + x[::-1],
            y=[m + s for m, s in zip(mean, sd)] + [m - s for m, s in zip(mean, sd)][::-1],
            fill="toself", fillcolor=color, opacity=0.2, line=dict(width=0),
            hoverinfo="skip", showlegend=False,
        )  # fmt: skip
        fig.add_scatter(
            x=x, y=mean, mode="lines+markers", line=dict(color=color),
            name=f"{variant} (n={rows[0].get('seeds', '?')})",
        )  # fmt: skip
    title = title or "Test accuracy against training budget"
    return _layout(fig, title, x_title, "mean accuracy (+- sd)")
