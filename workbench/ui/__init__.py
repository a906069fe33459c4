"""The notebook UI: the interactive panel, live plots, and the figures both draw."""

from workbench.ui.live import LivePlots
from workbench.ui.panel import WorkbenchPanel

__all__ = ["LivePlots", "WorkbenchPanel"]
