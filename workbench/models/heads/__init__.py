"""Auxiliary heads: the small classifiers that give each module its local loss, one family
per file. Each file names its family (NAME), says what its depth means (DEPTH), where it may
go (PLACE: "any" module, or "last" only; None for the linear head every family uses at depth
0) and builds it (`build(spec)`, importing torch only then). AUX_TYPES comes from here, so a
new family is one file (and its test).

Depth k counts the head's weight layers, as Belilovsky et al.'s k: k - 1 hidden layers of the
family's kind, then the classifier; M~ (`width`) is the hidden width. Every family is built
exactly as its paper's code builds it. Without BN in the trunk (Belilovsky's k=1 net),
`batchnorm=False` drops every BN of the head, as layerCNN does.

Importing this package does not import torch (config validation reads the names).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class HeadSpec:
    """One head to build: its family and depth, on `in_channels` maps of `size` x `size`."""

    family: str
    depth: int
    in_channels: int
    num_classes: int
    width: int  # M~, the hidden width
    size: int = 32
    batchnorm: bool = True
    pool_kernel: int | None = None  # 1cnn: the average-pool kernel (default: TRGL's by size)


def _families() -> dict[str, ModuleType]:
    found = [
        importlib.import_module(f"{__name__}.{m.name}")
        for m in pkgutil.iter_modules(__path__)
        if not m.name.startswith("_")
    ]
    return {f.NAME: f for f in sorted(found, key=lambda f: f.POSITION)}


FAMILIES = _families()
AUX_TYPES = tuple(name for name, f in FAMILIES.items() if f.PLACE == "any")
LAST_ONLY_TYPES = tuple(name for name, f in FAMILIES.items() if f.PLACE == "last")


def build_head(spec: HeadSpec) -> Any:
    """The head `spec` describes (an nn.Sequential): its family's, or at depth 0 the linear
    head (global average, linear) unless the family has its own meaning of depth 0."""
    family = FAMILIES[spec.family]
    if spec.depth == 0 and not getattr(family, "OWN_DEPTH_ZERO", False):
        family = FAMILIES["linear"]
    return family.build(spec)
