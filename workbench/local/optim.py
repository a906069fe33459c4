"""A learner's optimizer: the config's SGD or Adam, one update with fp16's loss scaling, and the
autocast its forward runs under."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from workbench.config import Config

if TYPE_CHECKING:  # the precision is chosen in training/, which drives learners
    from workbench.training.device import Precision


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to a run's low precision, or nothing at all in fp32 (dtype None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype)


def make_scaler(precision: Precision, device: torch.device) -> torch.amp.GradScaler | None:
    """A loss scaler for an fp16 run (one per optimizer: each learner skips its own steps)."""
    return torch.amp.GradScaler(device.type) if precision.scaled else None


def make_optimizer(
    params: Iterable[torch.nn.Parameter], config: Config, fused: bool = False
) -> torch.optim.Optimizer:
    """The config's optimizer over `params` (its lr is set per step by the schedule): SGD with
    its momentum and Nesterov, or Adam (PredSim's: default betas, weight decay as L2, as
    torch.optim.Adam adds it). `fused` (fp16 runs): one kernel per update that also applies a
    loss scaler's decision to skip a step on the device, where torch has one for these
    parameters; otherwise GradScaler.step reads that decision on the host, a device sync every
    step."""
    params = list(params)
    if config.optimizer == "adam":
        kind: type[torch.optim.Optimizer] = torch.optim.Adam
        options: dict = dict(lr=config.lr, weight_decay=config.weight_decay)
    else:
        kind = torch.optim.SGD
        options = dict(
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    if fused:
        try:
            return kind(params, fused=True, **options)
        except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device or torch
            pass
    return kind(params, **options)


def update(
    loss: Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None
) -> Tensor | None:
    """Backward and one optimizer step. With a loss scaler (fp16) the loss is scaled, and a step
    whose gradients hold an inf or NaN is skipped (the scaler halves its scale and tries again
    next step): returns, on the device, whether this step was skipped (None without a scaler).
    """
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
        return None
    scaled = scaler.scale(loss)
    # the scale before the update, read on the device: GradScaler.get_scale() would sync
    before = scaler._scale.clone()  # type: ignore[union-attr]
    scaled.backward()
    scaler.step(optimizer)
    scaler.update()
    return scaler._scale < before  # type: ignore[operator]  # halved: the step was skipped
