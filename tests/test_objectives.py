"""The field's objectives beside cross-entropy: InfoPro in its softmax and contrast modes, and
where modules end (`module_ends`, InfoPro's split points)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny

from workbench import Config, ConfigError, preset, run_experiment
from workbench.data import load_data
from workbench.local import LocalInputs, LocalLearner
from workbench.local.objective import LocalBatch
from workbench.local.objectives import OBJECTIVES, objective_class
from workbench.local.objectives.infopro_contrast import supervised_contrastive
from workbench.models import build_model
from workbench.models.archs import module_groups, unit_plan
from workbench.records import RunDir
from workbench.training import Trainer
from workbench.training.device import choose_precision

SMALL_RESNET = dict(arch="resnet", n_units=3, width=8, n_modules=2)


def test_module_ends_put_the_splits_where_infopro_puts_them():
    # InfoPro's ResNet-32 at K = 2 ends module 1 after stage 2's block 1 (0-indexed): 5 + 2
    config = Config(arch="resnet32", n_modules=2, module_ends="7", dataset="cifar10")
    groups = module_groups(config, len(unit_plan(config, 32, 3)))
    assert [len(g) for g in groups] == [1 + 7, 8]  # the stem travels with module 1
    # K = 16 begins with the stem alone: one more module than blocks
    sixteen = Config(arch="resnet32", n_modules=16, module_ends=",".join(map(str, range(15))))
    assert [len(g) for g in module_groups(sixteen, 16)] == [1] * 16
    for bad in ("8,7", "x", "15", "1,2"):
        with pytest.raises(ConfigError, match=f"module_ends: got '{bad}'"):
            Config(arch="resnet32", n_modules=2, module_ends=bad)


def test_infopros_lambdas_go_from_the_first_local_module_to_the_last():
    config = Config(**SMALL_RESNET, objective="infopro").replace(
        n_modules=4, n_units=4, ixx_1=6.0, ixy_1=0.0, ixx_2=1.0, ixy_2=2.0
    )
    lambdas = [objective_class("infopro")(config, k).lambdas() for k in range(3)]
    assert lambdas == [(6.0, 0.0), (3.5, 1.0), (1.0, 2.0)]  # their `ratio`: k / (K - 2)


def test_infopros_loss_is_the_reconstruction_and_the_label_term_by_hand():
    torch.manual_seed(0)
    config = Config(**SMALL_RESNET, objective="infopro", ixx_1=2.0, ixy_1=0.5)
    model = build_model(config)
    objective = objective_class("infopro")(config, 0)
    h = torch.randn(4, 16, 16, 16)
    image, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 1, 3])
    head = model.heads[0]
    part = objective.loss(head, LocalBatch(h, torch.zeros(1), y, image))
    decoded = head.decoder.layers(
        F.interpolate(h, size=[32, 32], mode="bilinear", align_corners=True)
    )
    bce = -(image * decoded.log() + (1 - image) * (1 - decoded).log()).mean()
    ce = F.cross_entropy(head.aux(h), y)
    assert torch.allclose(part.loss, 2.0 * bce + 0.5 * ce, atol=1e-6)
    assert torch.equal(part.logits, head(h))
    last = objective_class("infopro")(config, 1)  # the net's own head: plain cross-entropy
    out = torch.randn(4, 32, 8, 8)
    assert torch.allclose(last.loss(model.heads[1], LocalBatch(out, out, y, None)).loss,
                          F.cross_entropy(out.mean((2, 3)) @ model.heads[1][2].weight.T
                                          + model.heads[1][2].bias, y), atol=1e-6)  # fmt: skip


def test_the_supervised_contrastive_loss_by_hand():
    torch.manual_seed(1)
    features = F.normalize(torch.randn(6, 5), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])  # image 5 is alone in its class
    total = 0.0
    for i in range(6):
        others = [j for j in range(6) if j != i]
        denominator = sum(torch.exp(features[i] @ features[j] / 0.07) for j in others)
        positives = [j for j in others if labels[j] == labels[i]]
        logs = [features[i] @ features[p] / 0.07 - torch.log(denominator) for p in positives]
        total += -(sum(logs) / len(positives)) if positives else 0.0
    assert torch.allclose(supervised_contrastive(features, labels), total / 6, atol=1e-5)


def test_the_decoders_target_is_the_image_before_normalization(tmp_path):
    config = tiny(tmp_path, **SMALL_RESNET, objective="infopro")
    data = load_data(config)
    with RunDir.open(config) as run:
        trainer = Trainer(config, run, build_model(config), data, torch.device("cpu"))
        x, _ = next(iter(trainer.train_batches))
        raw = data.train_x[: len(x)].float() / 255  # the first batch, unshuffled below
        plain = next(iter(trainer.test_batches))[0]
        expected = data.test_x[: len(plain)].float() / 255
        assert torch.allclose(trainer.raw_images(plain), expected.view_as(plain), atol=1e-6)
        assert raw.min() >= 0 and raw.max() <= 1


@pytest.mark.parametrize("name", OBJECTIVES)
def test_no_gradient_crosses_a_module_boundary_with_any_objective(name):
    config = Config(**SMALL_RESNET, objective=name, momentum=0.0, weight_decay=0.0)
    model = build_model(config)
    precision = choose_precision("fp32", None)
    learners = [
        LocalLearner(
            config,
            [k],
            [model.trunk[k]],
            [model.heads[k]],
            precision,
            torch.device("cpu"),
            torch.contiguous_format,
        )  # fmt: skip
        for k in range(2)
    ]
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    image = torch.rand(8, 1, 32, 32)
    first = learners[0].step(LocalInputs(x, y, image), lr=0.1)
    grads = [p.grad.clone() for p in model.trunk[0].parameters()]
    learners[1].step(LocalInputs(first.output, y, image), lr=0.1)
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.trunk[0].parameters()))
    # every part of module 1's head learned from its loss (InfoPro's decoder, PredSim's conv)
    assert all(p.grad is not None for p in model.heads[0].parameters())


@pytest.mark.parametrize("method", ["sequential", "parallel", "multilap", "end-to-end"])
@pytest.mark.parametrize("name", ["infopro", "infopro-contrast"])
def test_infopro_trains_a_tiny_residual_net_above_chance(tmp_path, name, method):
    # a global average and a linear layer end the net (InfoPro's): slower to learn than the
    # default heads, so more steps than the cross-entropy tests take
    config = tiny(tmp_path, **SMALL_RESNET, objective=name, method=method, epochs=6)
    summary = run_experiment(config.replace(n_train=512, batch_size=32))
    assert summary["status"] == "finished"
    assert summary["final_test_acc"] > 0.3, summary["per_module_test_acc"]  # chance: 0.1


def test_predsims_similarity_matrix_and_pool_by_hand():
    from workbench.local.objectives.predsim import decoder_pool, similarity_matrix

    torch.manual_seed(2)
    x = torch.randn(5, 4, 3, 3)
    stds = x.view(5, 4, -1).std(dim=2)  # a conv map: each channel's spread over positions
    centred = stds - stds.mean(dim=1, keepdim=True)
    unit = centred / centred.norm(dim=1, keepdim=True)
    assert torch.allclose(similarity_matrix(x), unit @ unit.T, atol=1e-6)
    onehot = F.one_hot(torch.tensor([0, 1, 0]), 3).float()
    s = similarity_matrix(onehot)  # same class: 1; different classes: -1/2 (centred one-hots)
    assert torch.allclose(s, torch.tensor([[1, -0.5, 1], [-0.5, 1, -0.5], [1, -0.5, 1]]))
    # their kernel search, height then width doubled: 128 maps of 32x32 pass through
    # 16x32, 16x16, 8x16, 8x8, 4x8 (4096 values) to 4x4 windows of 8x8: 2048
    pool, dim = decoder_pool(128, 32, 2048)
    assert dim == 128 * 4 * 4 and pool.kernel_size == (8, 8)
    _, dim = decoder_pool(128, 32, 4096)  # stops after the height's step
    assert dim == 128 * 4 * 8
    assert decoder_pool(8, 4, 2048) == (None, 128)


@pytest.mark.parametrize("name", ["predsim", "pred", "sim"])
def test_predsims_losses_by_hand(name):
    from workbench.local.objectives.predsim import similarity_matrix

    torch.manual_seed(3)
    config = Config(**SMALL_RESNET, objective=name, beta=0.9)
    head = build_model(config).heads[0]
    torch.nn.init.normal_(head.decoder_y.weight)  # zero at the start, as theirs
    h, y = torch.randn(6, 16, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    part = objective_class(name)(config, 0).loss(head, LocalBatch(h, h, y, None))
    ce = F.cross_entropy(head(h), y)
    assert (head.conv_loss is None) == (name == "pred")  # their blocks build it for sim terms
    if name == "pred":
        expected = ce
    else:
        onehot = F.one_hot(y, 10).float()
        sim = F.mse_loss(similarity_matrix(head.conv_loss(h)), similarity_matrix(onehot))
        expected = 0.1 * ce + 0.9 * sim if name == "predsim" else sim
    assert torch.allclose(part.reported, expected, atol=1e-6)
    assert torch.allclose(part.loss, expected + (ce if name == "sim" else 0), atol=1e-6)


def test_predsims_last_module_also_trains_the_output_layer_by_hand():
    torch.manual_seed(4)
    config = Config(**SMALL_RESNET, objective="predsim", beta=0.9)
    head = build_model(config).heads[-1]
    torch.nn.init.normal_(head.output[-1].weight)  # zero at the start, as theirs
    h = torch.randn(6, 32, 8, 8, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    part = objective_class("predsim")(config, 1).loss(head, LocalBatch(h, h, y, None))
    logits = head.output[-1](h.mean((2, 3)))  # their ResNet: average pool, linear
    assert torch.allclose(part.logits, logits, atol=1e-6)  # the net's prediction
    expected = part.reported + 0.1 * F.cross_entropy(logits, y)  # (1 - beta) x global loss
    assert torch.allclose(part.loss, expected, atol=1e-6)
    h.grad = None
    (part.loss - part.reported).backward()  # the output layer's loss reaches no trunk
    assert h.grad is None or torch.count_nonzero(h.grad) == 0


@pytest.mark.parametrize("method", ["sequential", "parallel", "multilap", "end-to-end"])
@pytest.mark.parametrize("name", ["predsim", "pred", "sim"])
def test_predsim_trains_a_tiny_net_above_chance(tmp_path, name, method):
    # their optimizer: the output layer learns from (1 - beta) x its cross-entropy, as their
    # train.py scales it, which only Adam's step size does not feel
    config = tiny(tmp_path, n_modules=2, objective=name, method=method, epochs=3,
                  optimizer="adam", lr=2e-3, weight_decay=0.0)  # fmt: skip
    summary = run_experiment(config.replace(n_train=512, batch_size=32))
    assert summary["status"] == "finished"
    assert summary["final_test_acc"] > 0.3, summary["per_module_test_acc"]  # chance: 0.1


def test_predsims_vgg8b_recipe_trains_a_narrow_copy_above_chance(tmp_path):
    # the preset's net and recipe at width 8 (conv blocks, the fully connected block, the
    # output layer; leaky ReLU, Adam, the milestones schedule), without its dropout, which
    # drops whole channels of maps this narrow (tested in test_models)
    config = preset("predsim-vgg8b-cifar10").replace(
        dataset="mnist-5k", normalization="dataset", augment="none", width=8, epochs=3,
        dropout=0.0, lr=5e-3, lr_milestones="2", n_train=512, n_test=128, batch_size=32,
        out=str(tmp_path / "run"), device="cpu",
    )  # fmt: skip
    summary = run_experiment(config)
    assert summary["status"] == "finished"
    accs = summary["per_module_test_acc"]
    assert len(accs) == 7 and min(accs) > 0.5, accs  # chance: 0.1; the last is the output layer


@pytest.mark.parametrize("name", ["infopro", "infopro-contrast", "predsim"])
def test_the_kinetic_term_carries_over_to_each_objective_on_a_residual_trunk(
    tmp_path, monkeypatch, name
):
    """Combinations no paper ran: TRGL's transport term on InfoPro's and PredSim's modules, and
    PredSim on a CIFAR-style ResNet; the energy enters every step's loss."""
    from workbench.local import kinetic

    calls = []
    original = kinetic.forward_with_energy
    monkeypatch.setattr(
        kinetic, "forward_with_energy", lambda units, x: calls.append(1) or original(units, x)
    )
    recipe = dict(optimizer="adam", lr=1e-2, weight_decay=0.0) if "pred" in name else {}
    config = tiny(tmp_path, **SMALL_RESNET, objective=name, method="parallel", epochs=6,
                  regularization="kinetic", tau=1.0, **recipe)  # fmt: skip
    summary = run_experiment(config.replace(n_train=512, batch_size=32))
    assert summary["status"] == "finished"
    assert len(calls) == 6 * 16 * 2  # every step of both modules
    assert summary["final_test_acc"] > 0.3, summary["per_module_test_acc"]  # chance: 0.1


@pytest.mark.parametrize("name", ["infopro-contrast", "predsim"])
def test_each_objective_trains_pipelined(tmp_path, name):
    # module 2 in a worker process of its own: the queues carry what each objective reads
    recipe = dict(optimizer="adam", lr=1e-2, weight_decay=0.0) if name == "predsim" else {}
    config = tiny(tmp_path, **SMALL_RESNET, objective=name, method="parallel", pipeline=True,
                  epochs=6, **recipe)  # fmt: skip
    summary = run_experiment(config.replace(n_train=512, batch_size=32))
    assert summary["status"] == "finished"
    assert summary["final_test_acc"] > 0.3, summary["per_module_test_acc"]  # chance: 0.1


def test_head_settings_are_refused_with_objectives_that_build_their_own(tmp_path):
    for name in ("infopro", "predsim"):
        config = tiny(tmp_path / name, **SMALL_RESNET, objective=name, aux_type="mlp")
        with pytest.raises(ConfigError, match=f"aux_type: got 'mlp' with objective '{name}'"):
            run_experiment(config)
        assert not (tmp_path / name / "run" / "metrics.jsonl").exists()  # refused before training
