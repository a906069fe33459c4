"""The notebook UI: the interactive panel, live plots, and the figures both draw.

The panel and live plots load on first use, so `workbench.ui.plots` alone (batch notebooks)
creates no widget and leaves no widget state in an output notebook.
"""

from typing import Any

__all__ = ["LivePlots", "WorkbenchPanel"]


def __getattr__(name: str) -> Any:
    if name == "LivePlots":
        from workbench.ui.live import LivePlots

        return LivePlots
    if name == "WorkbenchPanel":
        from workbench.ui.panel import WorkbenchPanel

        return WorkbenchPanel
    raise AttributeError(name)
