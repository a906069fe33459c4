"""Each paper preset builds what the reference code builds: shapes and parameter counts.

The expected numbers were read off the reference code itself (eugenium/layerCNN cifar.py and
imagenet*.py, eugenium/DGL learning_curves/, auxiliary_nets_study/ and imagenet_dgl/,
block-wise/module-wise resnet110-4modules-stl10.py, blackfeather-wang/InfoPro-Pytorch's
networks/, anokland/local-loss train.py), instantiated as their README commands configure
them. Heads of DGL's MLP families exclude a BatchNorm the reference builds and never uses (2C
parameters).
"""

from __future__ import annotations

import json

import pytest
import torch

from workbench import Config, ConfigError, preset
from workbench.cli import main
from workbench.models import build_model, parameter_counts
from workbench.presets import PRESETS, paper_presets

# preset: (trunk parameters per module, head parameters per module, output C x H x W per module)
REFERENCE = {
    "belilovsky-k1-cifar10": (
        [7168, 589824, 4718592, 18874368, 9437184],
        [10250, 10250, 20490, 40970, 40970],
        [(256, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8), (1024, 8, 8)],
    ),
    "belilovsky-k2-cifar10": (
        [3712, 147712, 1180160, 590336],
        [153098, 153098, 601098, 601098],
        [(128, 32, 32), (128, 32, 32), (256, 16, 16), (256, 16, 16)],
    ),
    "belilovsky-k3-cifar10": (
        [3712, 147712, 1180160, 590336],
        [300810, 300810, 1191434, 1191434],
        [(128, 32, 32), (128, 32, 32), (256, 16, 16), (256, 16, 16)],
    ),
    "dgl-cifar10": (
        [1920, 74112, 147840, 295680],
        [214154, 846090, 846090, 2113546],
        [(64, 32, 32), (128, 16, 16), (128, 16, 16), (256, 8, 8)],
    ),
    "trgl-resnet110-stl10": (
        [65872, 199680, 499968, 961792],
        [8106, 12170, 42762, 42762],
        [(16, 96, 96), (32, 48, 48), (64, 24, 24), (64, 24, 24)],
    ),
    "dgl-vgg13-imagenet": (
        [1920, 37056, 74112, 147840, 295680, 590592, 1181184, 2360832, 2360832, 2360832],
        [468584, 468584, 1353960, 1353960, 4378088, 4378088]
        + [15439848, 15439848, 15439848, 123642856],
        [(64, 224, 224), (64, 224, 224), (128, 112, 112), (128, 112, 112), (256, 56, 56)]
        + [(256, 56, 56), (512, 28, 28), (512, 28, 28), (512, 14, 14), (512, 14, 14)],
    ),
    # layerCNN's ImageNet heads cannot be built as committed (see the presets): trunks only
    "belilovsky-k1-imagenet": (
        [27904, 590080, 4719104, 18875392, 75499520, 37750784, 301993984, 150999040],
        None,
        [(256, 112, 112), (256, 112, 112), (512, 56, 56), (1024, 28, 28), (2048, 14, 14)]
        + [(2048, 14, 14), (4096, 7, 7), (4096, 7, 7)],
    ),
    "belilovsky-k2-imagenet": (
        [14080, 147712, 1180160, 590336, 4719616, 2360320, 18876416, 9439232],
        None,
        [(128, 112, 112), (128, 112, 112), (256, 56, 56), (256, 56, 56), (512, 28, 28)]
        + [(512, 28, 28), (1024, 14, 14), (1024, 14, 14)],
    ),
}
REFERENCE["belilovsky-k3-imagenet"] = REFERENCE["belilovsky-k2-imagenet"]
# InfoPro-Pytorch's `Experiments on CIFAR-SVHN-STL10/networks`, instantiated as comand.sh's
# commands build them (resnet32/110, local_module_num K, 1c2f, contrast, feature dim 128,
# CIFAR-10) and cut where its configs.py splits; a local module's head is its aux net and its
# decoder (per part below) and the workbench's read-out of the contrast features (128 x 10 + 10
# parameters, trained on them detached: the reference evaluates the last module only); the last
# module's head is the net's own fc
REFERENCE.update(
    {
        "infopro-resnet32-k2-cifar10": (
            [56912, 409344],
            [48501, 650],
            [(32, 16, 16), (64, 8, 8)],
        ),
        "infopro-resnet32-k4-cifar10": (
            [14480, 42432, 113408, 295936],
            [28789, 48501, 70389, 650],
            [(16, 32, 32), (32, 16, 16), (64, 8, 8), (64, 8, 8)],
        ),
        "infopro-resnet32-k8-cifar10": (
            [5136, 9344, 9344, 33088, 37120, 76288, 147968, 147968],
            [28789] * 3 + [48501, 48501, 70389, 70389, 650],
            [(16, 32, 32)] * 3 + [(32, 16, 16), (32, 16, 16)] + [(64, 8, 8)] * 3,
        ),
        "infopro-resnet32-k16-cifar10": (
            [464] + [4672] * 5 + [14528] + [18560] * 4 + [57728] + [73984] * 4,
            [28789] * 6 + [48501] * 5 + [70389] * 4 + [650],
            [(16, 32, 32)] * 6 + [(32, 16, 16)] * 5 + [(64, 8, 8)] * 5,
        ),
        "infopro-resnet110-k2-cifar10": (
            [247568, 1482496],
            [48501, 650],
            [(32, 16, 16), (64, 8, 8)],
        ),
        "infopro-resnet110-k4-cifar10": (
            [56528, 172480, 465280, 1035776],
            [28789, 48501, 70389, 650],
            [(16, 32, 32), (32, 16, 16), (64, 8, 8), (64, 8, 8)],
        ),
        "infopro-resnet110-k8-cifar10": (
            [23824, 32704, 42560, 129920, 129920, 335360, 517888, 517888],
            [28789, 28789] + [48501] * 3 + [70389, 70389, 650],
            [(16, 32, 32), (16, 32, 32)] + [(32, 16, 16)] * 3 + [(64, 8, 8)] * 3,
        ),
        "infopro-resnet110-k16-cifar10": (
            [9808] + [14016] * 5 + [37760, 55680, 55680, 74240, 74240, 168832] + [295936] * 4,
            [28789] * 6 + [48501] * 5 + [70389] * 4 + [650],
            [(16, 32, 32)] * 6 + [(32, 16, 16)] * 5 + [(64, 8, 8)] * 5,
        ),
        "infopro-e2e-resnet32-cifar10": (
            [466256],
            [650],
            [(64, 8, 8)],
        ),
        "infopro-e2e-resnet110-cifar10": (
            [1730064],
            [650],
            [(64, 8, 8)],
        ),
    }
)
# anokland/local-loss's train.py, VGGn("vgg8b") as its README command builds it (CIFAR-10,
# dim-in-decoder 2048): each block's encoder and BN, then the head: decoder_y and conv_loss
# (linear_loss for the fully connected block), the last one also the output layer
# (Net.layer_out); 8,903,434 parameters without the local losses' parts, as its README says.
# The backprop preset's heads before the last are the workbench's detached linear probes.
_VGG8B = [3840, 295680, 590592, 1181184, 2360832, 2360832, 2100224]
_VGG8B_SHAPES = [(128, 32, 32), (256, 32, 32), (256, 16, 16), (512, 16, 16), (512, 8, 8)] + [
    (512, 4, 4),
    (1024, 1, 1),
]
REFERENCE["predsim-vgg8b-cifar10"] = (
    _VGG8B,
    [20490 + 147456] + [20490 + 589824] * 2 + [20490 + 2359296] * 3 + [10250 + 1048576 + 10250],
    _VGG8B_SHAPES,
)
REFERENCE["predsim-vgg8b-backprop-cifar10"] = (
    _VGG8B,
    [1290, 2570, 2570, 5130, 5130, 5130, 10250],
    _VGG8B_SHAPES,
)
# the same nets' aux net and decoder of a local module, by the module's output channels
REFERENCE_INFOPRO_PARTS = {16: (25408, 2091), 32: (43392, 3819), 64: (61824, 7275)}


def module_output_shapes(config: Config) -> list[tuple[int, ...]]:
    """Each module's output shape, on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        model = build_model(config, initialize=False).eval()  # BN1d needs 2 images to train
        x = torch.empty(1, config.dataset_info.channels, config.input_size, config.input_size)
        shapes = []
        for module in model.trunk:
            x = module(x)
            shapes.append(tuple(x.shape[1:]))
    return shapes


def test_every_paper_preset_is_pinned():
    assert set(paper_presets()) <= set(REFERENCE)


@pytest.mark.parametrize("name", list(REFERENCE))
def test_preset_builds_the_reference_network(name):
    trunk, heads, shapes = REFERENCE[name]
    config = preset(name)
    counts = parameter_counts(config)
    assert counts["trunk_params"] == trunk
    if heads is not None:
        assert counts["head_params"] == heads
    assert module_output_shapes(config) == shapes


@pytest.mark.parametrize("name", [n for n in REFERENCE if n.startswith("infopro-resnet")])
def test_infopro_presets_aux_nets_and_decoders_are_the_reference_codes(name):
    config = preset(name)
    with torch.device("meta"):
        model = build_model(config, initialize=False)
    count = lambda part: sum(p.numel() for p in part.parameters())  # noqa: E731
    widths = [shape[0] for shape in REFERENCE[name][2][:-1]]
    aux, decoders = zip(*(REFERENCE_INFOPRO_PARTS[c] for c in widths))
    assert [count(h.aux) for h in model.heads[:-1]] == list(aux)
    assert [count(h.decoder) for h in model.heads[:-1]] == list(decoders)
    assert all(count(h.readout) == 128 * 10 + 10 for h in model.heads[:-1])


def test_predsim_preset_has_the_reference_codes_decoders_and_output_layer():
    with torch.device("meta"):
        model = build_model(preset("predsim-vgg8b-cifar10"), initialize=False)
    count = lambda part: sum(p.numel() for p in part.parameters())  # noqa: E731
    assert [count(h.decoder_y) for h in model.heads] == [20490] * 6 + [10250]
    assert [count(h.conv_loss) for h in model.heads] == [147456, 589824, 589824] + [2359296] * 3 + [
        1048576
    ]
    assert [h.output is None for h in model.heads] == [True] * 6 + [False]
    assert count(model.heads[-1].output) == 10250
    total = sum(map(count, model.trunk)) + count(model.heads[-1].output)
    assert total == 8903434  # the README's 8.9M


@pytest.mark.parametrize(
    "aux_type, depth, heads",
    [  # DGL's auxiliary-net study: a 6-layer net of width 128, max-pool before layers 2 and 4
        ("cnn", 3, [300810, 1191434, 1191434, 4742154, 4742154]),
        ("mlp", 4, [796170, 3165194, 3165194, 12621834, 12621834]),
        ("mlp-sr", 4, [846090, 3363338, 3363338, 13411338, 13411338]),
    ],
)
def test_head_families_are_dgls(aux_type, depth, heads):
    config = Config(
        dataset="cifar10",
        n_modules=6,
        width=128,
        downsampling="maxpool",
        schedule="2,4",
        conv_bias="all",
        aux_type=aux_type,
        aux_depth=depth,
        last_aux_type="mlp",
        last_aux_depth=3,
    )
    counts = parameter_counts(config)
    assert counts["trunk_params"] == [3840, 295680, 590592, 1181184, 2360832, 2360832]
    assert counts["head_params"] == [*heads, 8421386]  # the last: DGL's own 2-hidden MLP


def test_head_layers_are_in_dgls_order():
    def layers(aux_type, depth):
        config = Config(dataset="cifar10", width=8, aux_type=aux_type, aux_depth=depth)
        head = build_model(config).heads[0]
        return [type(m).__name__ for m in head if not isinstance(m, torch.nn.Identity)]

    conv = ["Conv2d", "BatchNorm2d", "ReLU"]
    mlp = ["Linear", "BatchNorm1d", "ReLU"]
    assert layers("cnn", 3) == [*conv, *conv, "AdaptiveAvgPool2d", "BatchNorm2d", "Flatten"] + [
        "Linear"
    ]
    assert layers("mlp", 4) == ["AdaptiveAvgPool2d", "Flatten", *mlp * 3, "Linear"]
    assert layers("mlp-sr", 4) == ["AdaptiveAvgPool2d", *conv * 3, "AdaptiveAvgPool2d"] + [
        "Flatten",
        *mlp * 3,
        "Linear",
    ]
    assert layers("1cnn", 2) == ["Conv2d", "ReLU", "AvgPool2d", "BatchNorm2d", "Flatten"] + [
        "Linear"
    ]


def test_paper_presets_say_what_their_number_is():
    for name, p in paper_presets().items():
        assert str(p.paper_number) in p.description, name
        assert "top-1" in p.description, name
        assert p.reference, name


def test_presets_json_gives_sizes_per_module(capsys):
    assert main(["presets", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert set(facts) == set(PRESETS)
    k1 = facts["belilovsky-k1-cifar10"]
    assert k1["paper_number"] == 88.3
    assert k1["trunk_params"] == REFERENCE["belilovsky-k1-cifar10"][0]
    assert k1["head_params"] == REFERENCE["belilovsky-k1-cifar10"][1]
    assert 33e6 < sum(k1["trunk_params"]) < 34e6  # "about 34M", at full resolution
    for name, f in facts.items():
        assert {"description", "paper_number", "trunk_params", "head_params"} <= set(f), name
        assert len(f["trunk_params"]) == len(f["head_params"]) == preset(name).n_modules


def test_aux_pool_sets_trgls_per_module_kernel_as_its_scripts_apc():
    # block-wise/module-wise's STL-10 two-module script (apc = [16, 8]) run on CIFAR-10, as
    # tools/refbench does: a ResNet-20's 16 and 8 px maps pool to 1x1. Its utils7.py builds
    # 1CNN as conv 3x3 (no bias), ReLU, AvgPool2d(apc), BN, linear: 9,610 and 37,642 weights.
    trgl = dict(dataset="cifar10", arch="resnet20", n_modules=2, shortcut="A", aux_type="1cnn")
    heads = build_model(Config(**trgl, aux_pool="16,8")).heads
    assert [h[2].kernel_size for h in heads] == [16, 8]
    assert [sum(p.numel() for p in h.parameters()) for h in heads] == [9610, 37642]
    x = torch.randn(2, 32, 16, 16)
    assert heads[0](x).shape == (2, 10)
    auto = build_model(Config(**trgl)).heads  # TRGL's rule by size: 16 px pools with 8, to 2x2
    assert [h[2].kernel_size for h in auto] == [8, 8]
    assert sum(p.numel() for p in auto[0].parameters()) == 9610 + 960
    for bad, says in [
        ("16", "allowed: auto, or 2 positive kernel sizes"),
        ("32,8", "module 1's is 32 on 16 px"),
    ]:
        with pytest.raises(ConfigError, match=says):
            Config(**trgl, aux_pool=bad)
    with pytest.raises(ConfigError, match="only 1cnn heads pool with a fixed kernel"):
        Config(**{**trgl, "aux_type": "cnn"}, aux_pool="8,8")
