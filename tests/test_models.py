"""Models: invertible downsampling, schedules, module splits, aux heads, the kinetic term."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workbench import Config, ConfigError
from workbench.config import ARCHS, accelerated_positions
from workbench.local import kinetic
from workbench.models import BasicBlock, InvertibleDownsampling, TrunkModule, build_model


def test_invertible_downsampling_is_exactly_invertible():
    x = torch.randn(3, 5, 16, 12)
    psi = InvertibleDownsampling()
    y = psi(x)
    assert y.shape == (3, 20, 8, 6)
    assert torch.equal(psi.inverse(y), x)  # bit-exact: a permutation of the entries
    assert torch.equal(torch.sort(y.flatten())[0], torch.sort(x.flatten())[0])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("downsampling", ["auto", "invertible", "maxpool", "avgpool", "stride"])
def test_every_arch_and_downsampling_gives_per_module_predictions(arch, downsampling):
    n_modules = 3 if arch != "greedy-cnn" else 4
    config = Config(
        arch=arch, downsampling=downsampling, n_modules=n_modules, width=8, dataset="cifar10"
    )
    model = build_model(config)
    logits = model.per_module_logits(torch.randn(2, 3, 32, 32))
    assert len(logits) == n_modules
    assert all(z.shape == (2, 10) for z in logits)


def test_downsampling_positions_halve_spatial_size_and_double_width():
    config = Config(
        arch="greedy-cnn",
        n_modules=5,
        width=16,
        schedule="1,3",
        downsampling="invertible",
        dataset="cifar10",
    )
    model = build_model(config)
    x = torch.randn(2, 3, 32, 32)
    shapes = []
    for module in model.trunk:
        x = module(x)
        shapes.append(tuple(x.shape[1:]))
    # psi on the raw image keeps the first width; later downsamplings double it
    assert shapes == [(16, 16, 16), (16, 16, 16), (32, 8, 8), (32, 8, 8), (32, 8, 8)]


def test_belilovsky_k3_widths_match_the_paper():
    from workbench import preset

    model = build_model(preset("belilovsky-k3-cifar10"))
    widths = [m[0].conv.out_channels for m in model.trunk]
    assert widths == [128, 128, 256, 256]


def test_accelerated_schedule_moves_downsampling_toward_the_input():
    assert accelerated_positions([6, 11]) == [3, 6]
    assert accelerated_positions([2, 3, 5, 7]) == [1, 2, 3, 4]
    standard = Config(arch="resnet32", dataset="cifar10").downsampling_positions()
    accelerated = Config(arch="resnet32", dataset="cifar10", schedule="accelerated")
    assert standard == [6, 11]
    assert accelerated.downsampling_positions() == [3, 6]


def test_resnet_blocks_are_shared_out_in_order_with_the_stem_first():
    model = build_model(Config(arch="resnet32", n_modules=4, dataset="cifar10"))
    blocks = [sum(isinstance(u, BasicBlock) for u in m) for m in model.trunk]
    assert blocks == [4, 4, 4, 3]
    assert not isinstance(model.trunk[0][0], BasicBlock)  # the stem


@pytest.mark.parametrize(
    "aux_type, weight_layers",
    [
        ("cnn", [1, 1, 2, 3, 4]),
        ("mlp", [1, 1, 2, 3, 4]),
        ("mlp-sr", [1, 4, 5, 6, 7]),  # three 1x1 convs of spatial reduction, then the MLP
        ("1cnn", [1, 1, 2, 3, 4]),
    ],
)
def test_aux_depth_counts_the_heads_weight_layers(aux_type, weight_layers):
    sizes = []
    for k in range(5):
        head = build_model(Config(aux_depth=k, aux_type=aux_type, width=8)).heads[0]
        hidden = [m for m in head if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        sizes.append(len(hidden))
    assert sizes == weight_layers  # k=0 and k=1 are a single linear layer


def test_option_a_shortcut_subsamples_and_appends_zero_channels():
    block = BasicBlock(4, 8, "stride", shortcut="A")
    assert not list(block.shortcut.parameters())  # no weights in option A
    x = torch.randn(2, 4, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (2, 8, 4, 4)
    assert torch.equal(out[:, :4], x[:, :, ::2, ::2])  # every second pixel, exactly
    assert torch.equal(out[:, 4:], torch.zeros(2, 4, 4, 4))
    b = BasicBlock(4, 8, "stride", shortcut="B")
    assert isinstance(b.shortcut[0], torch.nn.Conv2d) and b.shortcut[0].kernel_size == (1, 1)


def test_option_a_is_the_cifar_resnets_default_and_b_with_psi():
    def shortcuts(**fields):
        model = build_model(Config(arch="resnet20", dataset="cifar10", **fields))
        return {type(u.shortcut).__name__ for m in model.trunk for u in m if hasattr(u, "branch")}

    assert shortcuts() == {"Identity", "ZeroPadShortcut"}
    assert shortcuts(shortcut="B") == {"Identity", "Sequential"}
    assert shortcuts(downsampling="invertible") == {"Identity", "Sequential"}
    with pytest.raises(ConfigError, match="shortcut: got 'A' with downsampling 'invertible'"):
        Config(arch="resnet20", shortcut="A", downsampling="invertible")


def test_any_number_of_residual_blocks_each_its_own_module():
    config = Config(arch="resnet", n_units=10, n_modules=10, dataset="cifar10")
    model = build_model(config)
    assert len(model) == 10
    blocks = [sum(isinstance(u, BasicBlock) for u in m) for m in model.trunk]
    assert blocks == [1] * 10
    assert config.downsampling_positions() == [5, 8]  # stages of 4, 3 and 3 blocks
    assert all(z.shape == (2, 10) for z in model.per_module_logits(torch.randn(2, 3, 32, 32)))


def test_several_greedy_layers_make_one_module():
    model = build_model(Config(n_units=6, n_modules=2, width=8, schedule="1,4"))
    assert [len(m) for m in model.trunk] == [3, 3]
    with pytest.raises(ConfigError, match="n_modules: got 7; allowed: 1 to 6"):
        Config(n_units=6, n_modules=7)


def test_conv_bias_follows_the_reference_codes():
    def biases(**fields):
        model = build_model(Config(n_modules=3, width=8, **fields))
        return [m[0].conv.bias is not None for m in model.trunk]

    assert biases() == [False, False, False]  # BN follows: no bias
    assert biases(batchnorm=False) == [True, True, True]
    assert biases(batchnorm=False, conv_bias="first") == [True, False, False]  # layerCNN CIFAR
    assert biases(conv_bias="all") == [True, True, True]  # DGL's convs


def test_last_module_gets_its_own_head_family():
    model = build_model(Config(n_modules=3, width=8, last_aux_type="mlp", last_aux_depth=3))
    assert any(isinstance(m, torch.nn.Conv2d) for m in model.heads[0])
    last = [m for m in model.heads[-1] if isinstance(m, torch.nn.Linear)]
    assert [lin.out_features for lin in last] == [4 * 16, 4 * 16, 10]  # 2 hidden of 4C


def test_kinetic_needs_residual_blocks():
    with pytest.raises(ConfigError, match="regularization: got 'kinetic' for greedy-cnn"):
        Config(regularization="kinetic")


def test_kinetic_energy_is_the_mean_squared_residual():
    torch.manual_seed(0)
    blocks = [BasicBlock(4, 4, None), BasicBlock(4, 8, "stride"), BasicBlock(8, 16, "invertible")]
    module = TrunkModule(*blocks).eval()
    x = torch.randn(3, 4, 8, 8)
    out, energy = kinetic.forward_with_energy(module, x)
    expected, h = 0.0, x
    for b in blocks:  # by hand: r = branch(P x); out = relu(shortcut(P x) + r)
        p = b.down(h)
        r = b.branch(p)
        expected += (r**2).sum() / r.numel()
        h = torch.relu(b.shortcut(p) + r)
    assert torch.allclose(out, h)
    assert torch.allclose(energy, torch.as_tensor(expected))
    assert energy > 0


def test_kinetic_weight_and_varying_tau():
    c = Config(arch="resnet20", n_modules=4, regularization="kinetic", tau=2.0, varying_tau=True)
    assert [kinetic.weight(c, k) for k in range(4)] == [0.5, 0.5, 0.25, 0.25]
    assert kinetic.weight(c.replace(regularization="none"), 0) == 0.0


def test_the_library_imports_nothing_that_sits_on_top_of_it():
    """Imports point one way: the CLI, the UI, batch runs, the bench and the doctor use the
    library (config, data, models, training, records, ...), never the reverse (FLOP counting
    lived in bench/ and the cost model imported it: a 12-file circle)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "workbench"
    on_top = ("cli", "ui", "batch", "bench", "doctor", "__main__")
    wrong = []
    for path in root.rglob("*.py"):
        if path.relative_to(root).parts[0].removesuffix(".py") in on_top:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                parts = name.split(".")
                if parts[0] == "workbench" and len(parts) > 1 and parts[1] in on_top:
                    wrong.append(f"{path.relative_to(root)}:{node.lineno} imports {name}")
    assert wrong == []


def _module_imports(root: Path) -> dict[str, set[str]]:
    """workbench's modules and the workbench modules each imports when it is imported (top-level
    statements; TYPE_CHECKING blocks and imports inside functions run later, or never)."""
    import ast

    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        edges = set()
        for target in found:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/ and a/b/ too
                prefix = ".".join(parts[:i])
                if prefix in modules and prefix != name and not name.startswith(prefix + "."):
                    edges.add(prefix)
        graph[name] = edges
    return graph


def test_the_library_has_no_import_circle():
    """No module reaches itself through what it imports at import time (a circle made the
    FLOP counting, the cost model and the bench one tangle; the local learner must not
    depend on the training loop that drives it)."""
    graph = _module_imports(Path(__file__).resolve().parents[1] / "workbench")
    circles = []
    for start in graph:
        seen, stack = set(), [start]
        while stack:
            for nxt in graph[stack.pop()]:
                if nxt == start:
                    circles.append(start)
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
    assert sorted(set(circles)) == []
    assert not any(m.startswith("workbench.training") for m in graph["workbench.local.learner"])


def test_dropout_drops_a_units_output_only_after_its_local_loss_saw_it():
    # PredSim's blocks: loss on the block's output, then Dropout2d, then the max-pool
    config = Config(arch="vgg8b", dataset="cifar10", width=8, n_modules=7, dropout=0.5,
                    activation="leaky-relu", objective="predsim")  # fmt: skip
    model = build_model(config).train()
    first, second = model.trunk[0][0], model.trunk[1][0]
    assert isinstance(first.dropout, torch.nn.Identity)  # the image is not dropped out
    assert isinstance(second.dropout, torch.nn.Dropout2d) and second.dropout.p == 0.5
    assert isinstance(second.act, torch.nn.LeakyReLU) and second.act.negative_slope == 0.01
    x = torch.randn(4, 3, 32, 32)
    h = model.trunk[0](x)  # what module 1's loss reads: the same on every pass
    assert torch.equal(h, model.trunk[0](x))
    dropped = second.dropout(h)  # what module 2 reads: whole channels zeroed, the rest scaled
    zero = dropped.flatten(2).abs().sum(2) == 0
    assert 0 < zero.float().mean() < 1
    assert torch.allclose(dropped[~zero], 2 * h[~zero])
    # the last module's output layer reads the fully connected unit's output dropped out
    out = model.heads[-1].output
    assert isinstance(out[0], torch.nn.Dropout2d) and torch.count_nonzero(out[-1].weight) == 0
    model.eval()
    assert torch.equal(model.trunk[1](h), model.trunk[1](h))  # no dropout when testing


def test_a_fully_connected_unit_reads_the_whole_map_and_gives_a_1x1_map():
    config = Config(arch="vgg8b", dataset="cifar10", width=8, n_modules=7)
    model = build_model(config).eval()
    fc = model.trunk[-1][0]
    assert fc.linear.in_features == 32 * 2 * 2 and fc.linear.out_features == 1024
    x = torch.randn(2, 32, 4, 4)
    out = fc(x)
    assert out.shape == (2, 1024, 1, 1)
    pooled = torch.nn.functional.max_pool2d(x, 2).flatten(1)  # max-pool before it (VGG8b)
    expected = torch.relu(fc.bn(fc.linear(pooled)))
    assert torch.allclose(out.flatten(1), expected, atol=1e-6)


def test_activation_and_dropout_are_refused_where_blocks_have_none():
    with pytest.raises(ConfigError, match="activation: got 'leaky-relu' for resnet20; allowed"):
        Config(arch="resnet20", activation="leaky-relu")
    with pytest.raises(ConfigError, match="dropout: got 0.2 for resnet20; allowed: 0"):
        Config(arch="resnet20", dropout=0.2)
    with pytest.raises(ConfigError, match="dropout: got 1.0; allowed: 0 <= dropout < 1"):
        Config(dropout=1.0)
