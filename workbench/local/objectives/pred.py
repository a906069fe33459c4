"""PredSim's `--loss-sup pred`: the prediction term alone (see predsim.py)."""

from __future__ import annotations

from workbench.local.objectives import predsim


class Objective(predsim.Objective):
    summary = "PredSim's prediction term alone"
    pred, sim = True, False
