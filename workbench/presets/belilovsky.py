"""Belilovsky, Eickenberg and Oyallon, "Greedy Layerwise Learning Can Scale to ImageNet" (ICML
2019): CIFAR-10 and ImageNet, as eugenium/layerCNN's cifar.py and imagenet*.py run them."""

from __future__ import annotations

from workbench.presets.preset import Preset

# layerCNN's cifar.py: per layer 50 epochs, lr 0.1 x 0.2 every 15 epochs with a fresh SGD at each
# decay (momentum restarts), batch 128, wd 5e-4, crop+flip, its normalisation
LAYERCNN_CIFAR = dict(
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
    "belilovsky-k1-cifar10": Preset(
        _K1_CIFAR,
        dict(
            LAYERCNN_CIFAR,
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
        dict(LAYERCNN_CIFAR, n_modules=4, width=128, aux_depth=2, schedule="3"),
        paper_number=90.4,
        reference="python cifar.py --ncnn 4 --nlin 1 --feature_size 128 --down [1] --bn 1",
    ),
    "belilovsky-k3-cifar10": Preset(
        _K23_CIFAR.format(k=3, acc=91.7, ens=92.8, nlin=2, hidden="two"),
        dict(LAYERCNN_CIFAR, n_modules=4, width=128, aux_depth=3, schedule="3"),
        paper_number=91.7,
        reference="python cifar.py --ncnn 4 --nlin 2 --feature_size 128 --down [1] --bn 1",
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
}
