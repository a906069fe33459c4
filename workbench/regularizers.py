"""TRGL's kinetic-energy (transport) regularizer.

loss_k = CE(aux_k(T_k(x)), y) + 1/(2 tau) * sum_m mean(r_m^2), r_m the residual branch of block m
of module k. The energy itself is summed by `TrunkModule.forward_with_kinetic`; this file owns
the weight, so the formula lives in one place.
"""

from __future__ import annotations

from workbench.config import Config


def kinetic_weight(config: Config, module: int) -> float:
    """The factor 1/(2 tau_k) on module k's kinetic energy (0 without the regularizer)."""
    if config.regularization != "kinetic":
        return 0.0
    return 1.0 / (2.0 * config.tau_for_module(module))
