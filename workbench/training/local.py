"""What one module's local training step is made of, shared by the Trainer (engine.py) and the
pipeline's worker processes (pipeline_worker.py), so the two cannot drift apart."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.config import Config
from workbench.regularizers import kinetic_weight


def make_sgd(params: Iterable[torch.nn.Parameter], config: Config) -> torch.optim.SGD:
    """The config's SGD over `params` (its lr is set per step by the schedule)."""
    return torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )


def local_loss(
    config: Config, k: int, logits: Tensor, y: Tensor, energy: Tensor
) -> tuple[Tensor, Tensor]:
    """(cross-entropy, loss) of module k: its aux head's cross-entropy (with the config's
    label smoothing) plus the kinetic term's weight for module k times its energy."""
    ce = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
    return ce, ce + kinetic_weight(config, k) * energy
