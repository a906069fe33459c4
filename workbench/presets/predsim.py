"""Nokland and Eidnes, "Training Neural Networks with Local Error Signals" (ICML 2019): PredSim
on VGG8b, as anokland/local-loss's README command runs it, and the same net trained by global
backprop (its `--backprop`).

train.py's defaults under that command: 400 epochs, batch 128, Adam at lr 5e-4 per block
(weight decay 0) decayed x0.25 after epochs 200, 300, 350 and 375; random crops (padding 4)
and flips; its normalization; every block trains on every batch (parallel), its loss on its
output before dropout and max-pool; PyTorch's default init (decoder_y and the output layer at
zero); the test pass through the output layer with BN's running averages.
"""

from __future__ import annotations

from workbench.presets.preset import Preset

RECIPE = dict(
    dataset="cifar10",
    arch="vgg8b",
    n_modules=7,  # each conv layer and the fully connected layer a block of its own
    conv_bias="all",  # their convs keep a bias before BN
    activation="leaky-relu",
    dropout=0.2,
    epochs=400,
    batch_size=128,
    optimizer="adam",
    lr=5e-4,
    weight_decay=0.0,
    lr_schedule="milestones",
    lr_milestones="200,300,350,375",
    lr_decay=0.25,
    augment="crop-flip",
    normalization="predsim",
    precise_bn=False,  # their test() uses BN's running averages
)
_NET = (
    "VGG8b (conv 128, 256, pool, 256, 512, pool, 512, pool, 512, pool, fully connected 1024, "
    "output layer; BN, leaky ReLU, dropout 0.2 after each block)"
)
_RECIPE = "400 epochs, batch 128, Adam lr 5e-4 x0.25 after epochs 200/300/350/375, crops and flips"
_NUMBER = (
    "the README's table gives test error; the preset quotes 100 minus it as top-1 and compares "
    "the last epoch's (train.py prints every epoch's)"
)

PRESETS: dict[str, Preset] = {
    "predsim-vgg8b-cifar10": Preset(
        "PredSim on CIFAR-10 (paper: 5.58% test error, i.e. 94.42% top-1; global backprop "
        f"5.99%), as local-loss's README command runs it: {_NET}, each block trained by "
        "0.01 x cross-entropy of its decoder_y (on its output average-pooled to at most 2048 "
        "values) + 0.99 x the MSE between the similarity matrices of a 3x3 conv of its output "
        "(a linear map for the fully connected block) and of the labels; the output layer by "
        f"0.01 x cross-entropy on the last block's detached output. {_RECIPE}; {_NUMBER}.",
        dict(RECIPE, method="parallel", objective="predsim", beta=0.99, dim_in_decoder=2048),
        paper_number=94.42,
        reference="python train.py --model vgg8b --dataset CIFAR10 --dropout 0.2 --lr 5e-4 "
        "--nonlin leakyrelu --dim-in-decoder 2048",
    ),
    "predsim-vgg8b-backprop-cifar10": Preset(
        "Global backprop on the same VGG8b, CIFAR-10 (paper: 5.99% test error, i.e. 94.01% "
        f"top-1): {_NET} trained end to end by cross-entropy through the output layer "
        f"(PyTorch's default init), train.py --backprop. {_RECIPE}; {_NUMBER}.",
        dict(RECIPE, method="end-to-end", aux_depth=0),
        paper_number=94.01,
        reference="python train.py --model vgg8b --dataset CIFAR10 --dropout 0.2 --lr 5e-4 "
        "--nonlin leakyrelu --backprop",
    ),
}
