"""PredSim's `--loss-sup sim`: the similarity-matching term alone (see predsim.py); a linear
read-out of the detached features gives the logits evaluation reads."""

from __future__ import annotations

from workbench.local.objectives import predsim


class Objective(predsim.Objective):
    summary = "PredSim's similarity-matching term alone"
    pred, sim = False, True
