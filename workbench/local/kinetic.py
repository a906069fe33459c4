"""TRGL's kinetic-energy (transport) regularizer, in one place: a term any local objective
on a residual trunk can carry.

    loss_k = objective_k + 1/(2 tau_k) * sum_m mean(r_m^2)

r_m is the residual branch of block m of module k (Karkar et al., "Module-wise Training of
Neural Networks via the Minimizing Movement Scheme"). A run without the regularizer never
computes the energy. This file imports no torch: config validation reads `check`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workbench.models import archs

if TYPE_CHECKING:
    from torch import Tensor

    from workbench.config import Config

NAME = "kinetic"


def active(config: Config) -> bool:
    return config.regularization == NAME


def tau(config: Config, module: int) -> float:
    """tau of module k (0-indexed): TRGL's "varying tau" halves it in the first half."""
    if config.varying_tau and module < config.n_modules // 2:
        return config.tau / 2
    return config.tau


def weight(config: Config, module: int) -> float:
    """The factor 1/(2 tau_k) on module k's kinetic energy (0 without the regularizer)."""
    if not active(config):
        return 0.0
    return 1.0 / (2.0 * tau(config, module))


def forward_with_energy(units: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    """(output, kinetic energy) of a trunk module: its units in order, the energy summed over
    its residual blocks (units with `forward_residual`) as mean(r^2) of each branch r."""
    energy = x.new_zeros(())
    for unit in units:
        if hasattr(unit, "forward_residual"):
            x, r = unit.forward_residual(x)
            energy = energy + r.pow(2).mean()
        else:
            x = unit(x)
    return x, energy


def check(config: Config) -> str | None:
    """Why the regularizer cannot apply to `config` (one line), or None."""
    if active(config) and archs.architecture(config).kind != "resnet":
        return (
            f"regularization: got 'kinetic' for {config.arch}, which has no residual blocks "
            "(the kinetic term penalises residual branches); allowed: none, or a resnet arch"
        )
    return None
