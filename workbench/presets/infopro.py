"""Wang, Ni, Song, Yang and Huang, "Revisiting Locally Supervised Learning: an Alternative to
End-to-end Training" (ICLR 2021): InfoPro on CIFAR-10, as blackfeather-wang/InfoPro-Pytorch's
`Experiments on CIFAR-SVHN-STL10/comand.sh` runs it, and the end-to-end nets it compares with.

Their recipe (train.py's training_configurations and `--cos_lr`): 160 epochs, one SGD over every
parameter (here one per module with the same settings, the same updates), Nesterov momentum 0.9,
weight decay 1e-4, batch 1024 at lr 0.8, the cosine set once per epoch with a 10-epoch warm-up
from 0.01, reflect-padded crops and flips, their CIFAR normalization, He-normal convs; every
module trains on every batch (parallel); the test pass uses BN's running averages through the
net's own head.
"""

from __future__ import annotations

from workbench.presets.preset import Preset

# their split points (networks/configs.py, `InfoPro`) as `module_ends`: the blocks after which
# modules 1..K-1 end (their [stage, layer] is block (stage - 1) x n + layer + 1; [0, 0] the stem)
SPLITS = {
    "resnet32": {2: "7", 4: "3,7,11", 8: "1,3,5,7,9,11,13", 16: ",".join(map(str, range(15)))},
    "resnet110": {
        2: "27",
        4: "12,26,40",
        8: "5,12,19,26,33,40,47",
        16: "2,5,8,11,14,17,20,23,26,30,34,38,42,46,50",
    },
}
# comand.sh's lambdas per net and K: (ixx_1, ixy_1, ixx_2, ixy_2)
LAMBDAS = {
    ("resnet32", 2): (5, 1, 0, 0),
    ("resnet32", 4): (6, 0, 1, 2),
    ("resnet32", 8): (5, 0, 0, 2),
    ("resnet32", 16): (5, 0.05, 0.2, 0.5),
    ("resnet110", 2): (5, 0.5, 0, 0),
    ("resnet110", 4): (1, 0, 0, 1),
    ("resnet110", 8): (5, 0, 0, 1),
    ("resnet110", 16): (5, 0, 0.5, 1),
}
# the paper's figure, CIFAR-10 test error in percent: InfoPro (contrast) at K, and end-to-end
TEST_ERRORS = {
    "resnet32": {2: 7.76, 4: 8.58, 8: 11.13, 16: 12.75, 1: 7.37},
    "resnet110": {2: 6.42, 4: 7.30, 8: 8.93, 16: 9.90, 1: 6.50},
}
RECIPE = dict(
    dataset="cifar10",
    shortcut="B",  # their _make_layer: 1x1 conv + BN where a block downsamples
    init="he-conv",
    epochs=160,
    batch_size=1024,
    lr=0.8,
    lr_schedule="infopro-cosine",
    momentum=0.9,
    nesterov=True,
    weight_decay=1e-4,
    augment="reflect-crop-flip",
    normalization="infopro",
    precise_bn=False,  # their validate() uses BN's running averages
)
_RECIPE = (
    "Recipe: 160 epochs, every module on every batch (parallel), SGD with Nesterov momentum 0.9, "
    "wd 1e-4, batch 1024, lr 0.8 on a per-epoch cosine warmed up from 0.01 over 10 epochs, "
    "reflect-padded crops and flips, their normalization, He-normal convs"
)
_NUMBER = (
    "the paper's figure gives test error; the preset quotes 100 minus it as top-1 and compares "
    "the last epoch's, on the full test set (train.py keeps every epoch's test accuracy and "
    "the best)"
)


def _command(depth: int, k: int) -> str:
    ixx_1, ixy_1, ixx_2, ixy_2 = LAMBDAS[f"resnet{depth}", k]
    return (
        f"python train.py --dataset cifar10 --model resnet --layers {depth} --droprate 0.0 "
        f"--cos_lr --local_module_num {k} --local_loss_mode contrast --aux_net_widen 1 "
        f"--aux_net_feature_dim 128 --ixx_1 {ixx_1} --ixy_1 {ixy_1} --ixx_2 {ixx_2} "
        f"--ixy_2 {ixy_2} --aux_net_config 1c2f"
    )


def _infopro(depth: int, k: int) -> Preset:
    arch = f"resnet{depth}"
    ixx_1, ixy_1, ixx_2, ixy_2 = LAMBDAS[arch, k]
    error, e2e = TEST_ERRORS[arch][k], TEST_ERRORS[arch][1]
    lambdas = (
        f"lambdas ({ixx_1}, {ixy_1})"
        if k == 2
        else f"lambdas from ({ixx_1}, {ixy_1}) at module 1 to ({ixx_2}, {ixy_2}) at module {k - 1}"
    )
    return Preset(
        f"InfoPro (contrast) on CIFAR-10, ResNet-{depth} in K={k} modules (paper: {error:.2f}% "
        f"test error, i.e. {100 - error:.2f}% top-1; end-to-end {e2e:.2f}%), as its command file "
        f"runs it: modules end after blocks {SPLITS[arch][k]} (networks/configs.py; 0 is the "
        f"stem); each but the last learns lambda1 x BCE of a decoder's image + lambda2 x a "
        f"supervised contrastive term (temperature 0.07) on its 1c2f aux net, {lambdas}; the "
        f"last module cross-entropy through the net's own average pool and linear layer. "
        f"{_RECIPE}; {_NUMBER}.",
        dict(
            RECIPE,
            arch=arch,
            method="parallel",
            n_modules=k,
            module_ends=SPLITS[arch][k],
            objective="infopro-contrast",
            ixx_1=float(ixx_1),
            ixy_1=float(ixy_1),
            ixx_2=float(ixx_2),
            ixy_2=float(ixy_2),
        ),
        paper_number=round(100 - error, 2),
        reference=_command(depth, k),
    )


def _end_to_end(depth: int) -> Preset:
    error = TEST_ERRORS[f"resnet{depth}"][1]
    return Preset(
        f"InfoPro's end-to-end baseline on CIFAR-10: ResNet-{depth} trained whole by "
        f"cross-entropy through its own average pool and linear layer (paper: {error:.2f}% test "
        f"error, i.e. {100 - error:.2f}% top-1): train.py with --local_module_num 1 "
        f"(networks/configs.py's `1: [],  # End-to-end`). {_RECIPE}; {_NUMBER}.",
        dict(RECIPE, arch=f"resnet{depth}", method="end-to-end", n_modules=1, aux_depth=0),
        paper_number=round(100 - error, 2),
        reference=f"python train.py --dataset cifar10 --model resnet --layers {depth} "
        "--droprate 0.0 --cos_lr --local_module_num 1",
    )


PRESETS: dict[str, Preset] = {
    **{
        f"infopro-resnet{depth}-k{k}-cifar10": _infopro(depth, k)
        for depth in (32, 110)
        for k in (2, 4, 8, 16)
    },
    "infopro-e2e-resnet32-cifar10": _end_to_end(32),
    "infopro-e2e-resnet110-cifar10": _end_to_end(110),
}
