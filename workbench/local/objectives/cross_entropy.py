"""Cross-entropy of the module's auxiliary head: Belilovsky's, DGL's and TRGL's local loss
(with the config's label smoothing)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from workbench.local import objective


class Objective(objective.Objective):
    summary = "cross-entropy of the auxiliary head's prediction (Belilovsky, DGL, TRGL)"

    def loss(self, head: nn.Module, batch: objective.LocalBatch) -> objective.LocalLoss:
        logits = head(batch.output)
        ce = F.cross_entropy(logits, batch.labels, label_smoothing=self.config.label_smoothing)
        return objective.LocalLoss(ce, ce, logits)
