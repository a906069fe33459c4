"""Named presets: each paper's recipe, and small quick runs. A preset is a set of field values.

Figures quoted in the descriptions are the papers' (see METHODS.md in the team's shared notes);
what a run on this workbench reaches is in its own summary.json.
"""

from __future__ import annotations

from typing import Any

from workbench.config import Config, ConfigError

# Belilovsky et al.'s per-layer CIFAR-10 recipe (SGD, 50 epochs, lr 0.1 x 0.2 every 15)
_BELILOVSKY = dict(
    dataset="cifar10",
    arch="greedy-cnn",
    method="sequential",
    downsampling="invertible",
    aux_type="cnn",
    aux_width=256,
    epochs=50,
    batch_size=128,
    lr=0.1,
    lr_schedule="step",
    lr_step=15,
    lr_decay=0.2,
    momentum=0.9,
    weight_decay=5e-4,
    augment="crop-flip",
)
# TRGL's recipe (Karkar et al.): constant small lr, label smoothing, orthogonal init
_TRGL = dict(
    method="parallel",
    regularization="kinetic",
    varying_tau=True,
    aux_type="cnn",
    aux_depth=2,
    batch_size=256,
    lr=0.003,
    lr_schedule="constant",
    momentum=0.9,
    weight_decay=2e-4,
    label_smoothing=0.1,
    init="orthogonal",
    downsampling="stride",
)

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "quick": (
        "The default run: a 4-layer greedy CNN on the embedded 5,000 MNIST digits, CPU-sized.",
        {},
    ),
    "quick-resnet": (
        "ResNet-20 in 3 modules, parallel, with the kinetic term, on the embedded digits.",
        dict(
            arch="resnet20",
            n_modules=3,
            method="parallel",
            regularization="kinetic",
            aux_depth=1,
            epochs=3,
        ),
    ),
    "quick-vgg": (
        "VGG-11 (BN, quarter width) in 4 modules, sequential, on the embedded digits.",
        dict(arch="vgg11", width=16, n_modules=4, epochs=2),
    ),
    "belilovsky-k1-cifar10": (
        "Belilovsky k=1: 5 layers of width 256, no BN, psi at layers 1 and 3 (paper: 88.3%).",
        dict(_BELILOVSKY, n_modules=5, width=256, batchnorm=False, aux_depth=1, schedule="1,3"),
    ),
    "belilovsky-k2-cifar10": (
        "Belilovsky k=2: 4 layers 128,128,256,256 with BN, psi before layer 3 (paper: 90.4%).",
        dict(_BELILOVSKY, n_modules=4, width=128, aux_depth=2, schedule="3"),
    ),
    "belilovsky-k3-cifar10": (
        "Belilovsky k=3: 4 layers 128,128,256,256 with BN, psi before layer 3 (paper: 91.7%).",
        dict(_BELILOVSKY, n_modules=4, width=128, aux_depth=3, schedule="3"),
    ),
    "dgl-cifar10": (
        "DGL: the 4-layer CNN (64,128,128,256) trained in parallel (reference: 89.9% last layer).",
        dict(
            _BELILOVSKY,
            method="parallel",
            n_modules=4,
            width=64,
            aux_depth=3,
            aux_width=0,
            schedule="2,4",
        ),
    ),
    "trgl-resnet32-cifar10": (
        "TRGL: ResNet-32 in 4 modules, parallel, kinetic term tau=1 with varying tau.",
        dict(
            _TRGL,
            dataset="cifar10",
            arch="resnet32",
            n_modules=4,
            tau=1.0,
            epochs=100,
            augment="crop-flip",
        ),
    ),
    "trgl-resnet110-stl10": (
        "TRGL: ResNet-110 in 4 modules on STL-10, parallel, tau=1 (paper: 79.72%, DGL 73.23%).",
        dict(_TRGL, dataset="stl10", arch="resnet110", n_modules=4, tau=1.0, epochs=100),
    ),
    "ma-resnet32-accelerated": (
        "Ma et al.: ResNet-32 in 8 sequential modules, downsampling moved toward the input, "
        "with per-module linear probes. Compare with --schedule standard.",
        dict(
            dataset="cifar10",
            arch="resnet32",
            n_modules=8,
            method="sequential",
            schedule="accelerated",
            probe=True,
            aux_depth=2,
            epochs=10,
            lr=0.05,
            lr_schedule="cosine",
        ),
    ),
}


def preset(name: str, **overrides: Any) -> Config:
    """The config of preset `name`, with `overrides` applied on top."""
    if name not in PRESETS:
        raise ConfigError(f"preset: got {name!r}; allowed: {', '.join(PRESETS)}")
    return Config.from_dict({**PRESETS[name][1], **overrides})
