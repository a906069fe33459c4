"""Belilovsky, Eickenberg and Oyallon, "Decoupled Greedy Learning of CNNs" (ICML 2020), as
eugenium/DGL's learning_curves/ and imagenet_dgl/ run it."""

from __future__ import annotations

from workbench.presets.belilovsky import LAYERCNN_CIFAR
from workbench.presets.preset import Preset

PRESETS: dict[str, Preset] = {
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
            LAYERCNN_CIFAR,
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
