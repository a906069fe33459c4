"""Karkar, Ayed, de Bezenac and Gallinari, "Module-wise Training of Neural Networks via the
Minimizing Movement Scheme" (NeurIPS 2023), TRGL, as block-wise/module-wise runs it."""

from __future__ import annotations

from workbench.presets.preset import Preset

# TRGL's recipe (block-wise/module-wise): constant small lr, label smoothing, orthogonal init,
# their 1CNN heads, option-A shortcuts
_TRGL = dict(
    method="parallel",
    regularization="kinetic",
    varying_tau=True,
    aux_type="1cnn",
    aux_depth=2,
    shortcut="A",
    lr_schedule="constant",
    momentum=0.9,
    weight_decay=2e-4,
    label_smoothing=0.1,
    init="orthogonal",
    downsampling="stride",
    precise_bn=False,  # its test passes use BN's running averages
)


PRESETS: dict[str, Preset] = {
    "trgl-resnet32-cifar10": Preset(
        "TRGL's recipe on a CIFAR-sized net: ResNet-32 (option-A shortcuts) in 4 modules, "
        "parallel, kinetic term tau=1 with varying tau, TRGL's 1CNN heads, orthogonal init. No "
        "paper number: TRGL's own CIFAR-10 experiment is 10 blocks, each its own module, and "
        "its command is not in the reference code. Crops are padded by reflection, as TRGL's "
        "CIFAR loader (dataloaders9.py) pads them.",
        dict(
            _TRGL,
            dataset="cifar10",
            arch="resnet32",
            n_modules=4,
            tau=1.0,
            batch_size=256,
            lr=0.003,
            epochs=100,
            augment="reflect-crop-flip",
        ),
    ),
    "trgl-resnet110-stl10": Preset(
        "TRGL on STL-10 (paper: 79.72% top-1, the mean of 7 seeds; DGL 73.23%, end-to-end "
        "77.73%), as block-wise/module-wise's `resnet110-4modules-stl10.py -trt par -bas 64 "
        "-lbs 0.1 -lrt 0.002 -ing 0.1 -tra 1 -tau 1 -vta 1 -ne0 300`: ResNet-110 with option-A "
        "shortcuts in 4 modules of 14/14/13/13 blocks, trained in parallel for 300 epochs, "
        "batch 64, constant lr 0.002, wd 2e-4, label smoothing 0.1, orthogonal init (gain 0.1), "
        "kinetic term tau 1 (0.5 on modules 1-2); 1CNN heads (3x3 conv, ReLU, average pool 16 / "
        "16 / 8 / 8, BN, linear); inputs scaled to [-1, 1]. Evaluation is TRGL's: the best "
        "epoch (taking, as their code does, the best module each epoch) on a seeded half of "
        "the test set.",
        dict(
            _TRGL,
            dataset="stl10",
            arch="resnet110",
            n_modules=4,
            tau=1.0,
            batch_size=64,
            lr=0.002,
            epochs=300,
            augment="crop-flip",
            normalization="half",
            eval_protocol="trgl-best",
        ),
        paper_number=79.72,
        reference="python3 resnet110-4modules-stl10.py -trt par -bas 64 -lbs 0.1 -lrt 0.002 "
        "-ing 0.1 -tra 1 -tau 1 -vta 1 -ne0 300 -see 0 1 2 3 4 5 6 -avg",
    ),
}
