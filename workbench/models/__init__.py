"""Models: a trunk cut into locally supervised modules, each with its auxiliary head."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from workbench.config import Config
from workbench.models.aux import make_aux_head
from workbench.models.downsampling import InvertibleDownsampling
from workbench.models.trunks import BasicBlock, TrunkModule, build_units, split_into_modules

__all__ = ["BasicBlock", "InvertibleDownsampling", "LayerwiseNet", "TrunkModule", "build_model"]


class LayerwiseNet(nn.Module):
    """`trunk[k]` is module k; `heads[k]` its auxiliary classifier (the last one is the net's)."""

    def __init__(self, trunk: list[TrunkModule], heads: list[nn.Module]):
        super().__init__()
        self.trunk = nn.ModuleList(trunk)
        self.heads = nn.ModuleList(heads)

    def __len__(self) -> int:
        return len(self.trunk)

    def forward(self, x: Tensor) -> Tensor:
        for module in self.trunk:
            x = module(x)
        return self.heads[-1](x)

    def per_module_logits(self, x: Tensor, upto: int | None = None) -> list[Tensor]:
        """Every module's auxiliary prediction, in depth order (up to module `upto`)."""
        logits = []
        for module, head in list(zip(self.trunk, self.heads))[:upto]:
            x = module(x)
            logits.append(head(x))
        return logits


def _orthogonal_init(model: nn.Module, gain: float = 0.1) -> None:
    """TRGL's initialisation: orthogonal weights with a small gain, zero biases."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(m.weight, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_model(config: Config) -> LayerwiseNet:
    """The trunk of `config.arch` cut into `config.n_modules` modules, each with its aux head."""
    torch.manual_seed(config.seed)
    units, channels = build_units(config)
    groups = split_into_modules(config, units)
    first_width = channels[groups[0][-1]]
    trunk, heads = [], []
    for group in groups:
        c = channels[group[-1]]
        # M~ doubles whenever the trunk widens; 0 means "as wide as the module"
        aux_width = config.aux_width * c // first_width if config.aux_width else c
        trunk.append(TrunkModule(*(units[i] for i in group)))
        heads.append(
            make_aux_head(
                c,
                config.dataset_info.num_classes,
                config.aux_depth,
                config.aux_type,
                max(1, aux_width),
            )
        )
    model = LayerwiseNet(trunk, heads)
    if config.init == "orthogonal":
        _orthogonal_init(model)
    return model
