"""InfoPro in its contrast mode (their `--local_loss_mode contrast`, every command in their
comand.sh): the auxiliary term is the supervised contrastive loss (Khosla et al., their
SupConLoss with one view, temperature 0.07) of the 1c2f net's 128-dim features, L2-normalized.
Those features are no class prediction, so a linear read-out learns the classes from them,
detached (it changes nothing the module learns; the reference code has none, it evaluates the
last module only): evaluation, the ensemble and the probes read it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.local.objectives import infopro
from workbench.models.heads import HeadSpec

TEMPERATURE = 0.07  # their temperature and base_temperature


def supervised_contrastive(features: Tensor, labels: Tensor) -> Tensor:
    """SupConLoss (Khosla et al.; InfoPro's networks/losses.py) with one view per image:
    for each anchor, minus the mean log-probability of its same-class images among all the
    others, at temperature 0.07; an image alone in its class counts 0."""
    n = len(labels)
    logits = features @ features.T / TEMPERATURE
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()  # for stability
    others = 1 - torch.eye(n, device=features.device, dtype=logits.dtype)
    positives = (labels[:, None] == labels[None, :]).to(logits.dtype) * others
    log_prob = logits - torch.log((torch.exp(logits) * others).sum(1, keepdim=True))
    count = positives.sum(1)
    count = torch.where(count == 0, torch.ones_like(count), count)
    return -((positives * log_prob).sum(1) / count).mean()  # T / base T = 1


class Objective(infopro.Objective):
    summary = "InfoPro: reconstruct the image, contrast the labels (contrast mode)"

    def aux_outputs(self, spec: HeadSpec) -> int:
        return infopro.FEATURE_DIM

    def build_head(self, spec: HeadSpec) -> nn.Module:
        head = super().build_head(spec)
        if isinstance(head, infopro.InfoProHead):
            head.readout = nn.Linear(infopro.FEATURE_DIM, spec.num_classes)
        return head

    def aux_term(self, features: Tensor, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        term = supervised_contrastive(F.normalize(features.float(), dim=1), labels)
        return term, F.cross_entropy(logits, labels)  # the read-out learns from its logits
