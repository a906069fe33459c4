"""Named presets: each paper's experiment as its reference code ran it, and small quick runs.

A paper preset trains the experiment behind the number it quotes: the network, heads, recipe
and evaluation of the command in the reference code's README (eugenium/layerCNN, eugenium/DGL,
block-wise/module-wise). Where the paper's text and that command differ, the preset follows the
command and its description says so. Figures are the papers' (see METHODS.md in the team's
shared notes); what a run reaches is in its own summary.json, and `workbench reproduce` puts
the two side by side. Like the reference code, paper presets test with BatchNorm's running
averages (`precise_bn=False`); tools/refbench's parity measurement trains both codes alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workbench.config import FIELD_INFO, Config, ConfigError

# fields that do not change the experiment: where and how fast it runs, what else it records
NON_EXPERIMENT_FIELDS = tuple(name for name, info in FIELD_INFO.items() if not info.experiment)


@dataclass(frozen=True)
class Preset:
    """A set of config values, and what the paper reports for it (None: no number quoted)."""

    description: str
    values: dict[str, Any] = field(default_factory=dict)
    paper_number: float | None = None  # percent, top-1
    metric: str = "final_test_acc"  # the summary.json field the number compares with
    reference: str = ""  # the reference code's command behind the number

    def config(self, **overrides: Any) -> Config:
        return Config.from_dict({**self.values, **overrides})


# layerCNN's cifar.py: per layer 50 epochs, lr 0.1 x 0.2 every 15 epochs with a fresh SGD at each
# decay (momentum restarts), batch 128, wd 5e-4, crop+flip, its normalisation
_LAYERCNN_CIFAR = dict(
    dataset="cifar10",
    arch="greedy-cnn",
    method="sequential",
    downsampling="invertible",
    aux_type="cnn",
    aux_width=128,  # --width_aux default (the paper's text says M~ = 256)
    epochs=50,
    batch_size=128,
    lr=0.1,
    lr_schedule="step",
    lr_step=15,
    lr_decay=0.2,
    momentum_restart=True,
    momentum=0.9,
    weight_decay=5e-4,
    augment="crop-flip",
    normalization="layercnn",
    precise_bn=False,  # its test passes use BN's running averages
)
# layerCNN's imagenet.py / imagenet_single_layer.py: 45 epochs per layer, lr 0.1 / 10 every 20
# epochs with a fresh SGD, batch 256, wd 1e-4, random resized crops of 224, psi on the input
_LAYERCNN_IMAGENET = dict(
    dataset="imagenet",
    arch="greedy-cnn",
    method="sequential",
    n_modules=8,
    downsampling="invertible",
    aux_type="cnn",
    epochs=45,
    batch_size=256,
    lr=0.1,
    lr_schedule="step",
    lr_step=20,
    lr_decay=0.1,
    momentum_restart=True,
    momentum=0.9,
    weight_decay=1e-4,
    augment="resized-crop-flip",
    normalization="imagenet",
    precise_bn=False,  # its validation uses BN's running averages
)
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

_K1_CIFAR = (
    "Belilovsky et al. k=1 on CIFAR-10 (paper: 88.3% top-1 of the last layer, 88.4% for the layer "
    "ensemble, last epoch, full test set), as layerCNN's README command `cifar.py --ncnn 5 --nlin "
    "0 --feature_size 256` builds it: 5 conv layers of width 256 without BN; the input stays at "
    "32x32 and psi comes before layers 3 and 4 (the command's default --down [1,2] counts blocks "
    "from 0; the paper's text says layers 1 and 3); only the first conv has a bias, as the code "
    "builds it; heads average to 2x2 and a linear layer. About 34M trunk parameters."
)
_K23_CIFAR = (
    "Belilovsky et al. k={k} on CIFAR-10 (paper: {acc}% top-1 of the last layer, {ens}% for the "
    "layer ensemble, last epoch, full test set), as layerCNN's `cifar.py --ncnn 4 --nlin {nlin} "
    "--feature_size 128 --down [1] --bn 1` builds it: 4 conv layers 128,128,256,256 with BN, psi "
    "before layer 3; heads of {hidden} 3x3 conv(s) of width M~ = 128 (the --width_aux default; "
    "the paper's text says 256), doubling to 256 after psi."
)
_K_IMAGENET = (
    "Belilovsky et al. k={k} on ImageNet (paper: {acc}% top-1 of the last layer on the "
    "validation set, last epoch, center crop 224): layerCNN's `{script} --ncnn 8{nlin}`: psi on "
    "the 224 px input, 8 conv layers from width {w}{bn}, psi before layers {down}; {head}. "
    "Deviations: {dev} The reference trains in fp32; on a GPU the workbench uses mixed "
    "precision (bf16 from compute capability 8.0, fp16 with loss scaling on 7.x) unless "
    "--precision fp32."
)

PRESETS: dict[str, Preset] = {
    "quick": Preset(
        "The default run: a 4-layer greedy CNN on the embedded 5,000 MNIST digits, CPU-sized."
    ),
    "quick-resnet": Preset(
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
    "quick-vgg": Preset(
        "VGG-11 (BN, quarter width) in 4 modules, sequential, on the embedded digits.",
        dict(arch="vgg11", width=16, n_modules=4, epochs=2),
    ),
    "belilovsky-k1-cifar10": Preset(
        _K1_CIFAR,
        dict(
            _LAYERCNN_CIFAR,
            n_modules=5,
            width=256,
            batchnorm=False,
            conv_bias="first",
            aux_depth=1,
            schedule="3,4",
        ),
        paper_number=88.3,
        reference="python cifar.py --ncnn 5 --nlin 0 --feature_size 256",
    ),
    "belilovsky-k2-cifar10": Preset(
        _K23_CIFAR.format(k=2, acc=90.4, ens=90.7, nlin=1, hidden="one"),
        dict(_LAYERCNN_CIFAR, n_modules=4, width=128, aux_depth=2, schedule="3"),
        paper_number=90.4,
        reference="python cifar.py --ncnn 4 --nlin 1 --feature_size 128 --down [1] --bn 1",
    ),
    "belilovsky-k3-cifar10": Preset(
        _K23_CIFAR.format(k=3, acc=91.7, ens=92.8, nlin=2, hidden="two"),
        dict(_LAYERCNN_CIFAR, n_modules=4, width=128, aux_depth=3, schedule="3"),
        paper_number=91.7,
        reference="python cifar.py --ncnn 4 --nlin 2 --feature_size 128 --down [1] --bn 1",
    ),
    "dgl-cifar10": Preset(
        "DGL on CIFAR-10 (reference log: 89.9% top-1 of the last layer at the last of 50 epochs, "
        "full test set; per layer 78.4/85.3/87.9/89.9), as DGL's learning_curves/cifar_dgl.py "
        "ran it (its log says --epochs 50): 4 conv layers 64,128,128,256 with bias and BN, "
        "max-pool before layers 2 and 4, trained in parallel; heads of layers 1-3 are DGL's "
        "mlp-sr (3 1x1 convs at the layer's width on maps pooled to ceil(H/4), then 3 hidden "
        "layers of 4C), the last layer's head an MLP with 2 hidden layers of 4C; lr 0.1 x 0.2 "
        "every 15 epochs on one SGD per layer (momentum kept), wd 5e-4. The reference builds an "
        "unused BN in each MLP head (2C parameters) that the workbench leaves out.",
        dict(
            _LAYERCNN_CIFAR,
            method="parallel",
            n_modules=4,
            width=64,
            downsampling="maxpool",
            schedule="2,4",
            conv_bias="all",
            aux_type="mlp-sr",
            aux_depth=4,
            aux_width=0,
            last_aux_type="mlp",
            last_aux_depth=3,
            momentum_restart=False,
        ),
        paper_number=89.9,
        reference="python learning_curves/cifar_dgl.py --epochs 50",
    ),
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
    "ma-resnet32-accelerated": Preset(
        "Ma et al.: ResNet-32 in 8 sequential modules, downsampling moved toward the input, "
        "with per-module linear probes. Compare with --schedule standard. No paper number: "
        "their exact settings are not published.",
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
    "belilovsky-k1-imagenet": Preset(
        _K_IMAGENET.format(
            k=1,
            acc=58.1,
            script="imagenet_single_layer.py",
            nlin="",
            w=256,
            bn=" without BN (biased convs)",
            down="3, 4, 5 and 7 (its downsample list [1,2,3,5])",
            head="heads average to 2x2 and a linear layer",
            dev="the committed script never sets self.strd and stops at the first "
            "downsampling; the preset builds what it evidently meant (psi, width x2).",
        ),
        dict(
            _LAYERCNN_IMAGENET,
            width=256,
            batchnorm=False,
            aux_depth=1,
            schedule="1,3,4,5,7",
        ),
        paper_number=58.1,
        reference="python imagenet_single_layer.py IMAGENET_DIR -j THREADS --ncnn 8",
    ),
    **{
        f"belilovsky-k{k}-imagenet": Preset(
            _K_IMAGENET.format(
                k=k,
                acc=acc,
                script="imagenet.py",
                nlin=f" --nlin {k - 1}",
                w=128,
                bn=" with BN",
                down="3, 5 and 7 (its downsample list [1,3,5,7])",
                head=f"heads of {k - 1} 3x3 conv(s) of width M~ = 512 (--fixed_feat), doubling "
                "with the trunk, then average to 2x2, BN, linear",
                dev="the committed imagenet.py averages with a fixed kernel (7, halved at each "
                "downsampling: 16x16 maps into a 131M-weight linear layer, and a zero kernel "
                "from layer 7 on, which cannot run); the preset averages to 2x2 as the paper "
                "describes.",
            ),
            dict(_LAYERCNN_IMAGENET, width=128, aux_depth=k, aux_width=512, schedule="1,3,5,7"),
            paper_number=acc,
            reference=f"python imagenet.py IMAGENET_DIR -j THREADS --ncnn 8 --nlin {k - 1}",
        )
        for k, acc in ((2, 65.7), (3, 69.7))
    },
    "dgl-vgg13-imagenet": Preset(
        "DGL on ImageNet: VGG-13 with BN trained layer by layer in parallel (K=10), as DGL's "
        "`imagenet_dgl.py --arch vgg13 --block_size 1 --half` builds it: biased convs, max-pool "
        "before layers 3, 5, 7 and 9, mlp-sr heads (3 1x1 convs at the layer's width on maps "
        "pooled to ceil(H/4), 3 hidden layers of 4C), VGG's classifier (max-pool, 2 x 4096, no "
        "dropout) on the last layer, He-normal init; 50 epochs, lr 0.1 / 10 every 10 epochs "
        "with a fresh SGD per layer, wd 1e-4, batch 256, random resized crops of 224. No number "
        "quoted here (see the paper's ImageNet table). The reference trains in fp16 with loss "
        "scaling; the workbench uses bf16 autocast on GPUs from compute capability 8.0 (fp16 "
        "with loss scaling on 7.x, as the reference; --precision fp16 asks for it anywhere).",
        dict(
            dataset="imagenet",
            arch="vgg13",
            method="parallel",
            n_modules=10,
            conv_bias="all",
            aux_type="mlp-sr",
            aux_depth=4,
            last_aux_type="vgg",
            init="kaiming",
            epochs=50,
            batch_size=256,
            lr=0.1,
            lr_schedule="step",
            lr_step=10,
            lr_decay=0.1,
            momentum_restart=True,
            momentum=0.9,
            weight_decay=1e-4,
            augment="resized-crop-flip",
            normalization="imagenet",
            precise_bn=False,  # its validation uses BN's running averages
        ),
        reference="python imagenet_dgl.py IMAGENET_DIR --arch vgg13 --block_size 1 --half "
        "--dynamic-loss-scale -j THREADS",
    ),
}


def preset(name: str, **overrides: Any) -> Config:
    """The config of preset `name`, with `overrides` applied on top."""
    if name not in PRESETS:
        raise ConfigError(f"preset: got {name!r}; allowed: {', '.join(PRESETS)}")
    return PRESETS[name].config(**overrides)


def paper_presets() -> dict[str, Preset]:
    """The presets that quote a paper's number."""
    return {name: p for name, p in PRESETS.items() if p.paper_number is not None}
