"""Training methods (sequential, parallel, multilap, end-to-end) and the run entry point."""

from workbench.training.engine import Trainer, resolve_device, run_experiment
from workbench.training.methods import Phase, plan

__all__ = ["Phase", "Trainer", "plan", "resolve_device", "run_experiment"]
