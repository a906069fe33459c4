"""PredSim (Nokland and Eidnes, "Training Neural Networks with Local Error Signals", ICML 2019;
anokland/local-loss, train.py's LocalLossBlockConv): each module learns from

    (1 - beta) x CE(decoder_y(pool(h)), y) + beta x MSE(S(conv_loss(h)), S(onehot(y)))

S the adjusted cosine similarity matrix of the batch (their `similarity_matrix`: a conv map is
first reduced to each channel's standard deviation over its positions), `conv_loss` a 3x3
conv, `pool` an average pool that brings the features down to at most `dim_in_decoder` values
(their kernel search), `decoder_y` a linear layer with zero initial weights. The last module
also trains the net's output layer on its detached output by (1 - beta) x cross-entropy, as
their train.py scales the global loss (so their Adam, `optimizer adam`, is what it learns
with; SGD's step would shrink with the scale). pred.py and sim.py are their `--loss-sup pred`
and `--loss-sup sim`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.local import objective
from workbench.models.archs import architecture
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
    """decoder_y on the pooled features (the logits evaluation reads) and conv_loss (on a
    fully connected unit's 1x1 map a 1x1 conv: their linear_loss, Linear(C, C) without bias).
    The last module's head also holds the net's output layer (`output`), which their code
    trains by the global loss on the last block's output, detached and dropped out: its
    logits are the net's."""

    def __init__(
        self, spec: HeadSpec, limit: int, output: nn.Module | None = None, sim: bool = True
    ):
        super().__init__()
        self.pool, dim = decoder_pool(spec.in_channels, spec.size, limit)
        self.decoder_y = nn.Linear(dim, spec.num_classes)
        nn.init.zeros_(self.decoder_y.weight)
        kernel = 1 if spec.size == 1 else 3
        self.conv_loss = (  # `pred` alone has none, as their blocks build it
            nn.Conv2d(spec.in_channels, spec.in_channels, kernel, 1, kernel // 2, bias=False)
            if sim
            else None
        )
        self.output = output

    def features(self, h: Tensor) -> Tensor:
        return (h if self.pool is None else self.pool(h)).flatten(1)

    def forward(
        self, h: Tensor, parts: bool = False, read_out: bool = False
    ) -> Tensor | tuple[Tensor, Tensor | None, Tensor | None]:
        """The logits evaluation reads; with `parts`, everything the loss reads in one call (so
        that a DDP-wrapped head all-reduces every part's gradients): decoder_y's logits (of the
        detached features when it only `read_out`s them), conv_loss(h) (None for `pred`), and
        the output layer's logits of the detached h (None before the last module)."""
        if not parts:
            return self.decoder_y(self.features(h)) if self.output is None else self.output(h)
        decoded = self.decoder_y(self.features(h.detach() if read_out else h))
        output = None if self.output is None else self.output(h.detach())
        projected = None if self.conv_loss is None else self.conv_loss(h)
        return decoded, projected, output


def output_layer(spec: HeadSpec, dropout: float, resnet: bool) -> nn.Module:
    """Their output layer, trained by the global loss: after a fully connected unit (their
    Net.layer_out) a linear layer with zero initial weights on its output, dropped out; after
    a ResNet, a global average and a zero-initialized linear layer (their ResNet.linear); after
    plain convs, a linear layer on the flattened maps (their VGGn.classifier)."""
    fully_connected = spec.size == 1 and not resnet
    features = spec.in_channels * (1 if resnet else spec.size * spec.size)
    linear = nn.Linear(features, spec.num_classes)
    if resnet or fully_connected:
        nn.init.zeros_(linear.weight)
    drop = [nn.Dropout2d(dropout)] if dropout else []  # on a 1x1 map: each unit alone
    pool = [nn.AdaptiveAvgPool2d(1)] if resnet else []
    return nn.Sequential(*drop, *pool, nn.Flatten(), linear)


class Objective(objective.Objective):
    summary = "PredSim: predict the label and match the label's similarity structure"
    own_heads = True
    pred, sim = True, True  # which terms the loss has (their --loss-sup)

    def build_head(self, spec: HeadSpec) -> nn.Module:
        resnet = architecture(self.config).kind == "resnet"
        output = output_layer(spec, self.config.dropout, resnet) if self.last else None
        return PredSimHead(spec, self.config.dim_in_decoder, output, sim=self.sim)

    def loss(self, head: nn.Module, batch: objective.LocalBatch) -> objective.LocalLoss:
        h, y = batch.output, batch.labels
        beta = self.config.beta if self.pred and self.sim else float(self.sim)
        # sim alone: decoder_y is a read-out of the features
        logits, projected, output = head(h, parts=True, read_out=not self.pred)
        ce = F.cross_entropy(logits, y)
        loss = (1 - beta) * ce if self.pred else ce.new_zeros(())
        if projected is not None:
            onehot = F.one_hot(y, logits.size(1)).to(h.dtype)
            sim = F.mse_loss(similarity_matrix(projected), similarity_matrix(onehot))
            loss = loss + beta * sim
        stepped = loss if self.pred else loss + ce
        if output is not None:  # their global loss, scaled by (1 - beta) as train.py does
            logits = output
            scale = 1 - self.config.beta if self.pred and self.sim else 1.0
            stepped = stepped + scale * F.cross_entropy(logits, y)
        return objective.LocalLoss(stepped, loss, logits)
