"""Models: a trunk cut into locally supervised modules, each with its auxiliary head.

    archs.py         what each architecture is (units, widths, downsampling, shortcuts); no torch
    trunks.py        the units: conv layers, residual blocks, the stem
    heads/           the auxiliary heads, a family per file (Belilovsky's, DGL's, TRGL's 1CNN)
    downsampling.py  psi and the lossy alternatives
    net.py           LayerwiseNet and build_model
    flops.py         forward FLOPs per image of each module and head

Importing this package does not import torch (config validation reads `archs`); the names
below load on first use.
"""

from __future__ import annotations

from workbench.lazy import lazy_names

_LAZY = {
    "LayerwiseNet": "workbench.models.net",
    "build_model": "workbench.models.net",
    "parameter_counts": "workbench.models.net",
    "forward_flops": "workbench.models.flops",
    "BasicBlock": "workbench.models.trunks",
    "TrunkModule": "workbench.models.trunks",
    "InvertibleDownsampling": "workbench.models.downsampling",
    "build_head": "workbench.models.heads",
    "HeadSpec": "workbench.models.heads",
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_names(_LAZY)
