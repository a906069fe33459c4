"""The panel's runs browser: the run folders under a root, to overlay, export or delete.

Everything it shows is read from the folders (workbench.runs.list_runs), so it works the same
after a kernel restart: the runs are on disk, not in the kernel. A folder whose config.json or
summary.json cannot be read is listed as unreadable with the reason, and can be deleted.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from workbench.batch.compare import write_csv
from workbench.records import RunFolderError, read_json_quietly
from workbench.runs import delete_run, list_runs
from workbench.ui.live import LivePlots, format_acc
from workbench.ui.plots import save_figures

TABLE_COLUMNS = ("status", "label", "final", "per module", "wall time", "device", "folder")


def _status_text(row: dict[str, Any]) -> str:
    """The row's status, with the reason when the folder is unreadable."""
    return f"{row['status']}: {row['error']}" if row.get("error") else str(row["status"])


def _row_text(row: dict[str, Any]) -> str:
    """One line for the selection list: label, status, final accuracy, folder name."""
    return (
        f"{row['label']} · {_status_text(row)} · final {format_acc(row['final_test_acc'])}"
        f" · {Path(row['run_dir']).name}"
    )


def runs_table_html(rows: list[dict[str, Any]]) -> str:
    """The runs as an HTML table (missing values as '-')."""
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{c}</th>" for c in TABLE_COLUMNS)
    body = []
    for row in rows:
        wall = row["wall_time_s"]
        cells = [
            _status_text(row),
            row["label"],
            format_acc(row["final_test_acc"]),
            " ".join(format_acc(a) for a in row["per_module_test_acc"]) or "-",
            "-" if wall is None else f"{wall:.1f} s",
            row["device"] or "-",
            Path(row["run_dir"]).name,
        ]
        body.append(
            "<tr>"
            + "".join(f"<td style='padding:2px 8px'>{html.escape(str(c))}</td>" for c in cells)
            + "</tr>"
        )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class RunsBrowser:
    """Past runs under `root`: select some to overlay on the depth plot, delete them, export
    the table as CSV or the panel's figures as HTML and PNG."""

    def __init__(self, plots: LivePlots, root: str = "runs", on_message: Callable | None = None):
        self.plots = plots
        self.rows: list[dict[str, Any]] = []
        self.root = widgets.Text(
            value=root,
            description="runs folder",
            tooltip="the folder whose run folders are listed (panel and CLI runs go to runs/)",
            style={"description_width": "90px"},
            layout=widgets.Layout(width="420px"),
        )
        self.select = widgets.SelectMultiple(
            options=[], rows=8, layout=widgets.Layout(width="98%"), description=""
        )
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.overlay_button = widgets.Button(
            description="Overlay selected", tooltip="draw them on the accuracy-against-depth plot"
        )
        self.delete_button = widgets.Button(
            description="Delete selected", button_style="warning", icon="trash"
        )
        self.csv_button = widgets.Button(description="Export table (CSV)", icon="download")
        self.figures_button = widgets.Button(description="Save figures", icon="image")
        self.message = widgets.HTML()
        self.table = widgets.HTML()
        self.armed: tuple[str, ...] = ()  # the selection a first Delete press asked about
        self.refresh_button.on_click(lambda _: self.refresh())
        self.overlay_button.on_click(lambda _: self.overlay_selected())
        self.delete_button.on_click(lambda _: self.delete_selected())
        self.csv_button.on_click(lambda _: self.export_csv())
        self.figures_button.on_click(lambda _: self.save_figures())
        self.root.observe(lambda _: self.refresh(), names="value")
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.root, self.refresh_button]),
                self.select,
                widgets.HBox(
                    [
                        self.overlay_button,
                        self.delete_button,
                        self.csv_button,
                        self.figures_button,
                    ]
                ),
                self.message,
                self.table,
            ]
        )
        self.refresh()

    def say(self, text: str, error: bool = False) -> None:
        style = " style='color:#b00'" if error else ""
        self.message.value = f"<span{style}>{text}</span>"

    def refresh(self) -> None:
        """List the run folders under the root again (newest first)."""
        self.rows = list_runs(self.root.value)
        self.select.options = [(_row_text(r), r["run_dir"]) for r in self.rows]
        self.table.value = runs_table_html(self.rows) if self.rows else ""
        if not self.rows:
            self.say(f"no runs under <code>{html.escape(self.root.value)}</code> yet")
        self.armed = ()

    def selected(self) -> list[dict[str, Any]]:
        chosen = set(self.select.value)
        return [r for r in self.rows if r["run_dir"] in chosen]

    def overlay_selected(self) -> None:
        """Draw the selected runs' accuracy against depth (and probes) on the depth plot."""
        selected = self.selected()
        unreadable = sum(1 for r in selected if r.get("error"))
        rows = [r for r in selected if r["per_module_test_acc"] and not r.get("error")]
        for row in rows:
            # read when the list was; one spoiled since then draws unlabelled, not a crash
            config = read_json_quietly(Path(row["run_dir"]) / "config.json")
            self.plots.keep(
                row["run_dir"], config, row["per_module_test_acc"], row["per_module_probe_acc"]
            )
        untested = len(selected) - len(rows) - unreadable
        left_out = []
        if unreadable:
            left_out.append(f"{unreadable} unreadable")
        if untested:
            left_out.append(f"{untested} without a tested module")
        note = f" ({' and '.join(left_out)} left out)" if left_out else ""
        self.say(f"{len(rows)} run(s) on the depth plot{note}")

    def delete_selected(self) -> None:
        """Delete the selected run folders: the first press asks, the second deletes."""
        chosen = tuple(sorted(self.select.value))
        if not chosen:
            self.say("select runs to delete first")
            return
        if chosen != self.armed:
            self.armed = chosen
            self.say(f"press <b>Delete selected</b> again to delete {len(chosen)} run folder(s)")
            return
        errors = []
        for run_dir in chosen:
            try:
                delete_run(run_dir)
                self.plots.kept.pop(run_dir, None)
            except (RunFolderError, OSError) as e:
                errors.append(str(e))
        self.plots.draw_depth()
        self.refresh()
        if errors:
            self.say("; ".join(errors), error=True)
        else:
            self.say(f"deleted {len(chosen)} run folder(s)")

    def export_csv(self) -> Path:
        """Write the table of runs to <root>/runs.csv (atomically)."""
        path = Path(self.root.value) / "runs.csv"
        rows = [
            {**{k: v for k, v in r.items() if not isinstance(v, list)}, **_per_module(r)}
            for r in self.rows
        ]
        write_csv(path, rows)
        self.say(f"table written to <code>{html.escape(str(path))}</code>")
        return path

    def save_figures(self) -> list[Path]:
        """The panel's three figures as HTML (and PNG where a browser can render them) in
        <root>/figures/<time>/."""
        import plotly.graph_objects as go

        folder = Path(self.root.value) / "figures" / time.strftime("%Y%m%d-%H%M%S")
        plots = self.plots
        figures = {
            name: go.Figure(fig)
            for name, fig in (("accuracy", plots.accuracy), ("depth", plots.depth))
        }
        figures["loss"] = go.Figure(plots.loss)
        written = save_figures(figures, folder)
        self.say(f"{len(written)} file(s) written to <code>{html.escape(str(folder))}</code>")
        return written


def _per_module(row: dict[str, Any]) -> dict[str, Any]:
    return {f"acc_module_{k}": a for k, a in enumerate(row["per_module_test_acc"], start=1)}
