"""LayerwiseNet (a trunk cut into modules, one auxiliary head each) and build_model."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from workbench.config import Config
from workbench.local.objectives import objective_class
from workbench.models.archs import architecture, module_groups, unit_plan
from workbench.models.heads import HeadSpec
from workbench.models.trunks import TrunkModule, build_unit


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

    def per_module_logits(self, x: Tensor, upto: int | None = None, start: int = 0) -> list[Tensor]:
        """The auxiliary predictions of modules start+1..upto, in depth order; x is the input
        of module start+1 (the image when start is 0, a frozen prefix's output otherwise)."""
        return self.logits_and_output(x, upto, start)[0]

    def logits_and_output(
        self, x: Tensor, upto: int | None = None, start: int = 0
    ) -> tuple[list[Tensor], Tensor]:
        """per_module_logits, and the output of the last module run (module upto's)."""
        logits = []
        for module, head in list(zip(self.trunk, self.heads))[start:upto]:
            x = module(x)
            logits.append(head(x))
        return logits, x


def _orthogonal_init(model: nn.Module, gain: float = 0.1) -> None:
    """TRGL's initialisation: orthogonal weights with a small gain, zero biases."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(m.weight, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _kaiming_init(model: nn.Module) -> None:
    """torchvision's VGG initialisation (DGL's ImageNet code): He normal (fan out) convs,
    N(0, 0.01) linears, zero biases, BN at identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)):
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _he_conv_init(model: nn.Module) -> None:
    """InfoPro's (and ISDA's) ResNet initialisation, over the trunk, aux nets and decoders
    alike: convs N(0, sqrt(2 / (k * k * out))), BN at identity, linears left at PyTorch's."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_model(
    config: Config, num_classes: int | None = None, initialize: bool = True
) -> LayerwiseNet:
    """The trunk of `config.arch` cut into `config.n_modules` modules, each with its aux head.

    `num_classes` defaults to the dataset's (give it for a folder dataset, whose classes are
    read from disk). `initialize=False` skips the config's init (for counting on the meta device).
    """
    torch.manual_seed(config.seed)
    info = config.dataset_info
    classes = num_classes or info.num_classes
    if classes < 2:
        raise ValueError(f"num_classes: got {classes}; {config.dataset} needs it from the data")
    plan = unit_plan(config, config.input_size, info.channels)
    units = [build_unit(spec) for spec in plan]
    groups = module_groups(config, len(plan))
    first_width = plan[groups[0][-1]].out_channels
    batchnorm = config.batchnorm or architecture(config).kind == "resnet"
    trunk, heads = [], []
    pool_kernels = config.aux_pool_kernels()
    objective = objective_class(config.objective)  # it builds each module's head
    for k, group in enumerate(groups):
        out = plan[group[-1]]
        c = out.out_channels
        # M~ doubles whenever the trunk widens; 0 means "as wide as the module"
        aux_width = config.aux_width * c // first_width if config.aux_width else c
        kind, depth = config.aux_type, config.aux_depth
        if k == len(groups) - 1:
            kind = kind if config.last_aux_type == "same" else config.last_aux_type
            depth = depth if config.last_aux_depth < 0 else config.last_aux_depth
        trunk.append(TrunkModule(*(units[i] for i in group)))
        pool = pool_kernels[k] if pool_kernels else None
        width = max(1, aux_width)
        spec = HeadSpec(kind, depth, c, classes, width, out.size, batchnorm, pool)
        heads.append(objective(config, k).build_head(spec))
    model = LayerwiseNet(trunk, heads)
    if initialize and config.init == "orthogonal":
        _orthogonal_init(model)
    elif initialize and config.init == "kaiming":
        _kaiming_init(model)
    elif initialize and config.init == "he-conv":
        _he_conv_init(model)
    return model


def parameter_counts(config: Config, num_classes: int | None = None) -> dict[str, list[int]]:
    """Parameters of each module's part of the trunk and of its head, without allocating them."""
    with torch.device("meta"):
        model = build_model(config, num_classes, initialize=False)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {
        "trunk_params": [count(m) for m in model.trunk],
        "head_params": [count(h) for h in model.heads],
    }
