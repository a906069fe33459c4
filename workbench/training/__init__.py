"""Training methods (sequential, parallel, multilap, end-to-end) and the run entry point."""

from workbench.training.engine import Trainer
from workbench.training.methods import Phase, plan
from workbench.training.run import resolve_device, run_experiment

__all__ = ["Phase", "Trainer", "plan", "resolve_device", "run_experiment"]
