"""The workbench's figures, built from metric rows or run folders (plotly).

The same builders serve the live panel (wrapped in FigureWidgets and updated in place), the batch
notebook (static figures saved as HTML) and the comparison notebook.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.colors
import plotly.graph_objects as go
import plotly.io

from workbench.records import read_metrics

ACC_RANGE = [0, 1.02]


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
    return go.Figure(module_traces(n_modules, module_series(rows, split, key)))


def accuracy_figure(rows: Sequence[Mapping[str, Any]] = (), n_modules: int = 0) -> go.Figure:
    """Each module's test accuracy per epoch: one line per module."""
    fig = _per_module_figure(rows, n_modules, "test", "acc")
    fig.update_yaxes(range=ACC_RANGE)
    return _layout(fig, "Test accuracy of each module", "epoch (all modules, in order)", "accuracy")


def loss_figure(rows: Sequence[Mapping[str, Any]] = (), n_modules: int = 0) -> go.Figure:
    """Each module's training loss per epoch."""
    fig = _per_module_figure(rows, n_modules, "train", "loss")
    return _layout(fig, "Training loss of each module", "epoch (all modules, in order)", "loss")


def depth_traces(runs: Mapping[str, Sequence[float]] | None = None) -> list[go.Scatter]:
    """One line per run of test accuracy against module depth."""
    return [
        go.Scatter(x=list(range(1, len(accs) + 1)), y=list(accs), mode="lines+markers", name=label)
        for label, accs in (runs or {}).items()
    ]


def depth_figure(runs: Mapping[str, Sequence[float]] | None = None) -> go.Figure:
    """Final test accuracy against module depth, one line per run: the papers' figure."""
    fig = go.Figure(depth_traces(runs))
    fig.update_xaxes(dtick=1)
    fig.update_yaxes(range=ACC_RANGE)
    return _layout(fig, "Test accuracy against depth", "module", "accuracy")


def run_label(run_dir: str | Path) -> str:
    """A short name for a run: its folder name and the fields that usually tell runs apart."""
    path = Path(run_dir)
    config_path = path / "config.json"
    if not config_path.exists():
        return path.name
    c = json.loads(config_path.read_text())
    reg = f", kinetic tau={c['tau']:g}" if c.get("regularization") == "kinetic" else ""
    return f"{path.name}: {c['arch']} {c['method']} k={c['aux_depth']} {c['downsampling']}{reg}"


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
    return {
        "accuracy": accuracy_figure(rows, n),
        "depth": depth_figure({run_label(run_dir): summary.get("per_module_test_acc", [])}),
        "loss": loss_figure(rows, n),
    }


def save_figures(
    figures: Mapping[str, go.Figure], folder: str | Path, png: bool = True
) -> list[Path]:
    """Write each figure as self-contained HTML, and as PNG where a browser can render it.

    PNG export (kaleido) needs a Chromium on the machine; without one the HTML is still written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures.items():
        html = folder / f"{name}.html"
        fig.write_html(html, include_plotlyjs="directory")  # one plotly.min.js beside them
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
