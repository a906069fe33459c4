"""InfoPro (Wang, Ni, Song, Yang and Huang, "Revisiting Locally Supervised Learning: an
Alternative to End-to-end Training", ICLR 2021), in its softmax mode: each module but the last
keeps what it knows of the image and learns about the label,

    loss_k = lambda1_k * BCE(decoder(h), image) + lambda2_k * CE(aux(h), y)

with the image before normalization (their `_image_restore`), and the lambdas interpolated from
the first local module (ixx_1, ixy_1) to the (K-1)th (ixx_2, ixy_2) as their code does; the
last module learns cross-entropy through the net's own head (global average, linear). As in
their `Experiments on CIFAR-SVHN-STL10/networks/auxiliary_nets.py`:

    aux (1c2f)  conv 3x3 (no bias) to 2C with stride 2 (C at the last stage's width, stride 1),
                BN, ReLU, global average, linear 128, ReLU, linear (classes here)
    decoder     bilinear upsampling to the image size (align_corners), conv 3x3 to 12, BN,
                ReLU, conv 3x3 to the image's channels, sigmoid

infopro_contrast.py is the same with the supervised contrastive term in place of CE.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.local import objective
from workbench.models.heads import HeadSpec, build_head

FEATURE_DIM = 128  # their aux_net_feature_dim in every command
DECODER_WIDTH = 12


def binary_cross_entropy(decoded: Tensor, image: Tensor) -> Tensor:
    """Mean BCE of the decoded image against the image, in fp32 (autocast refuses BCE in half
    precision: its log saturates)."""
    with torch.autocast(decoded.device.type, enabled=False):
        return F.binary_cross_entropy(decoded.float(), image.float())


class Decoder(nn.Module):
    """A module's output upsampled to the image and decoded to it (pixel / 255, sigmoid)."""

    def __init__(self, channels: int, image_channels: int, image_size: int):
        super().__init__()
        self.image_size = image_size
        self.layers = nn.Sequential(
            nn.Conv2d(channels, DECODER_WIDTH, 3, 1, 1),
            nn.BatchNorm2d(DECODER_WIDTH),
            nn.ReLU(),
            nn.Conv2d(DECODER_WIDTH, image_channels, 3, 1, 1),
            nn.Sigmoid(),
        )

    def forward(self, h: Tensor) -> Tensor:
        size = [self.image_size, self.image_size]
        return self.layers(F.interpolate(h, size=size, mode="bilinear", align_corners=True))


def aux_1c2f(channels: int, out: int, last_stage: bool) -> nn.Sequential:
    """InfoPro's 1c2f auxiliary net: one conv, two linear layers."""
    wide, stride = (channels, 1) if last_stage else (2 * channels, 2)
    return nn.Sequential(
        nn.Conv2d(channels, wide, 3, stride, 1, bias=False),
        nn.BatchNorm2d(wide),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(wide, FEATURE_DIM),
        nn.ReLU(inplace=True),
        nn.Linear(FEATURE_DIM, out),
    )


class InfoProHead(nn.Module):
    """A local module's auxiliary net and decoder. forward(h) gives the logits evaluation
    reads; forward(h, parts=True) everything the loss reads, in one call (so that a
    DDP-wrapped head all-reduces every part's gradients): (aux output, logits, decoded image).
    """

    def __init__(self, aux: nn.Module, decoder: Decoder, readout: nn.Module | None = None):
        super().__init__()
        self.aux, self.decoder = aux, decoder
        self.readout = readout  # contrast mode: class logits from the detached features

    def forward(self, h: Tensor, parts: bool = False) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        features = self.aux(h)
        logits = features if self.readout is None else self.readout(features.detach())
        return (features, logits, self.decoder(h)) if parts else logits


class Objective(objective.Objective):
    needs = frozenset({"output", "labels", "image"})
    summary = "InfoPro: reconstruct the image and predict the label (softmax mode)"
    own_heads = True

    def lambdas(self) -> tuple[float, float]:
        """(lambda1, lambda2) of this module: from (ixx_1, ixy_1) at the first local module to
        (ixx_2, ixy_2) at the (K-1)th, linearly (their `ratio`)."""
        c, n_local = self.config, self.config.n_modules - 1
        ratio = self.k / (n_local - 1) if n_local > 1 else 0.0
        return (
            c.ixx_1 * (1 - ratio) + c.ixx_2 * ratio,
            c.ixy_1 * (1 - ratio) + c.ixy_2 * ratio,
        )

    def aux_outputs(self, spec: HeadSpec) -> int:
        return spec.num_classes

    def build_head(self, spec: HeadSpec) -> nn.Module:
        if self.last:  # the net's own classifier: global average, linear
            return build_head(dataclasses.replace(spec, family="linear"))
        c = self.config
        last_stage = spec.in_channels >= 4 * c.resolved_width
        aux = aux_1c2f(spec.in_channels, self.aux_outputs(spec), last_stage)
        info = c.dataset_info
        return InfoProHead(aux, Decoder(spec.in_channels, info.channels, c.input_size))

    def loss(self, head: nn.Module, batch: objective.LocalBatch) -> objective.LocalLoss:
        if self.last:
            logits = head(batch.output)
            ce = F.cross_entropy(logits, batch.labels)
            return objective.LocalLoss(ce, ce, logits)
        assert batch.image is not None
        ixx, ixy = self.lambdas()
        features, logits, decoded = head(batch.output, parts=True)
        reconstruction = binary_cross_entropy(decoded, batch.image)
        term, readout = self.aux_term(features, logits, batch.labels)
        loss = ixx * reconstruction + ixy * term
        return objective.LocalLoss(loss + readout, loss, logits)

    def aux_term(self, features: Tensor, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(the auxiliary term, a read-out's own loss to add: none here, the aux net's output
        is the logits)."""
        return F.cross_entropy(features, labels), features.new_zeros(())
