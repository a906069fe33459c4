"""PredSim (Nokland and Eidnes, "Training Neural Networks with Local Error Signals", ICML 2019;
anokland/local-loss, train.py's LocalLossBlockConv): each module learns from

    (1 - beta) x CE(decoder_y(pool(h)), y) + beta x MSE(S(conv_loss(h)), S(onehot(y)))

S the adjusted cosine similarity matrix of the batch (their `similarity_matrix`: a conv map is
first reduced to each channel's standard deviation over its positions), `conv_loss` a 3x3
conv, `pool` an average pool that brings the features down to at most `dim_in_decoder` values
(their kernel search), `decoder_y` a linear layer with zero initial weights. pred.py and sim.py
are their `--loss-sup pred` and `--loss-sup sim`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.local import objective
from workbench.models.heads import HeadSpec


def similarity_matrix(x: Tensor) -> Tensor:
    """Their adjusted cosine similarity of every pair in the batch (x.size(0) squared)."""
    if x.dim() == 4:
        if x.size(1) > 3 and x.size(2) > 1:
            x = x.view(x.size(0), x.size(1), -1).std(dim=2)
        else:
            x = x.view(x.size(0), -1)
    xc = x - x.mean(dim=1).unsqueeze(1)
    xn = xc / (1e-8 + torch.sqrt(torch.sum(xc**2, dim=1))).unsqueeze(1)
    return xn.matmul(xn.transpose(1, 0)).clamp(-1, 1)


def decoder_pool(channels: int, size: int, limit: int) -> tuple[nn.Module | None, int]:
    """Their average pool for decoder_y: kernels doubled, height then width, until the pooled
    features hold at most `limit` values (or the kernel spans the map); (pool, features)."""
    ks_h, ks_w, out_h, out_w = 1, 1, size, size
    dim = channels * out_h * out_w
    while dim > limit and ks_h < size:
        ks_h *= 2
        out_h = math.ceil(size / ks_h)
        dim = channels * out_h * out_w
        if dim > limit:
            ks_w *= 2
            out_w = math.ceil(size / ks_w)
            dim = channels * out_h * out_w
    if ks_h == ks_w == 1:
        return None, dim
    pad_h = (ks_h * (out_h - size // ks_h)) // 2
    pad_w = (ks_w * (out_w - size // ks_w)) // 2
    return nn.AvgPool2d((ks_h, ks_w), padding=(pad_h, pad_w)), dim


class PredSimHead(nn.Module):
    """decoder_y on the pooled features (the logits evaluation reads) and conv_loss."""

    def __init__(self, spec: HeadSpec, limit: int):
        super().__init__()
        self.pool, dim = decoder_pool(spec.in_channels, spec.size, limit)
        self.decoder_y = nn.Linear(dim, spec.num_classes)
        nn.init.zeros_(self.decoder_y.weight)
        self.conv_loss = nn.Conv2d(spec.in_channels, spec.in_channels, 3, 1, 1, bias=False)

    def features(self, h: Tensor) -> Tensor:
        return (h if self.pool is None else self.pool(h)).flatten(1)

    def forward(self, h: Tensor) -> Tensor:
        return self.decoder_y(self.features(h))


class Objective(objective.Objective):
    summary = "PredSim: predict the label and match the label's similarity structure"
    pred, sim = True, True  # which terms the loss has (their --loss-sup)

    def build_head(self, spec: HeadSpec) -> nn.Module:
        return PredSimHead(spec, self.config.dim_in_decoder)

    def loss(self, head: nn.Module, batch: objective.LocalBatch) -> objective.LocalLoss:
        h, y = batch.output, batch.labels
        beta = self.config.beta if self.pred and self.sim else float(self.sim)
        logits = head(h if self.pred else h.detach())  # sim alone: a read-out of the features
        ce = F.cross_entropy(logits, y)
        loss = (1 - beta) * ce if self.pred else ce.new_zeros(())
        if self.sim:
            onehot = F.one_hot(y, logits.size(1)).to(h.dtype)
            sim = F.mse_loss(similarity_matrix(head.conv_loss(h)), similarity_matrix(onehot))
            loss = loss + beta * sim
        return objective.LocalLoss(loss if self.pred else loss + ce, loss, logits)
