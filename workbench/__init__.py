"""The layer-wise learning workbench: greedy, decoupled and kinetic-regularized module-wise
training of CNNs and ResNets, with per-module records for notebooks, sweeps and teaching.

    from workbench import Config, run_experiment
    summary = run_experiment(Config(arch="resnet20", n_modules=3, method="parallel"))
"""

from workbench.config import Config, ConfigError
from workbench.presets import PRESETS, preset

__all__ = ["PRESETS", "Config", "ConfigError", "preset", "run_experiment"]


def __getattr__(name: str):  # torch is imported only when training is asked for
    if name == "run_experiment":
        from workbench.training import run_experiment

        return run_experiment
    raise AttributeError(name)
