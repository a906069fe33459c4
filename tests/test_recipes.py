"""The papers' schedules and evaluation: TRGL's ne1 + k ne2 epochs and multi-lap rounds,
momentum restarts at step decays, Nesterov, top-5, TRGL's best-epoch protocol, and InfoPro's
per-epoch cosine and initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny

from workbench import Config, ConfigError, run_experiment
from workbench.models import build_model
from workbench.records import read_metrics
from workbench.training import plan
from workbench.training.methods import learning_rate, restarts_momentum


def test_sequential_module_k_trains_ne1_plus_k_ne2_epochs(tmp_path):
    config = tiny(tmp_path, n_modules=3, epochs=2, extra_epochs_per_module=1, lr_schedule="step")
    assert [p.epochs for p in plan(config)] == [2, 3, 4]
    summary = run_experiment(config)
    assert summary["status"] == "finished"
    rows = [r for r in read_metrics(config.out) if r["split"] == "train"]
    assert [sum(r["module"] == k for r in rows) for k in (1, 2, 3)] == [2, 3, 4]


def test_multilap_rounds_give_the_extra_epochs_every_lap():
    config = Config(method="multilap", n_modules=3, epochs=4, laps=2, extra_epochs_per_module=1)
    phases = plan(config)
    assert [(p.lap, p.modules[0], p.epochs) for p in phases] == [
        (0, 0, 2), (0, 1, 3), (0, 2, 4), (1, 0, 2), (1, 1, 3), (1, 2, 4),
    ]  # fmt: skip
    # the lr schedule of module 3 spans its 8 epochs over both laps
    third = [(p.first_epoch, p.total_epochs) for p in phases if p.modules == (2,)]
    assert third == [(0, 8), (4, 8)]
    with pytest.raises(ConfigError, match="extra_epochs_per_module: got 1 with method 'parallel'"):
        Config(method="parallel", extra_epochs_per_module=1)


def test_cosine_spans_a_modules_own_epochs():
    config = Config(lr=1.0, lr_schedule="cosine", epochs=2)
    assert learning_rate(config, 2.0, 4) == pytest.approx(0.5)  # halfway through 4 epochs
    assert learning_rate(config, 2.0) == pytest.approx(0.0)  # the end of 2


def test_infopros_cosine_is_set_per_epoch_and_warms_up_from_001():
    # their adjust_learning_rate(optimizer, epoch + 1) at lr 0.8 over 160 epochs, by hand
    config = Config(lr=0.8, lr_schedule="infopro-cosine", epochs=160)
    cosine = lambda e: 0.4 * (1 + math.cos(math.pi * e / 160))  # noqa: E731
    assert learning_rate(config, 0.0) == pytest.approx(0.01)  # epoch 1: all warm-up
    assert learning_rate(config, 0.99) == learning_rate(config, 0.0)  # constant in an epoch
    assert learning_rate(config, 4.5) == pytest.approx(cosine(5) * 4 / 10 + 0.01 * 6 / 10)
    assert learning_rate(config, 10.0) == pytest.approx(cosine(11))  # warm-up over
    assert learning_rate(config, 159.5) == pytest.approx(0.0)  # epoch 160
    # the schedule spans a module's own epochs, as the cosine does
    assert learning_rate(config.replace(epochs=2), 10.0, 160) == learning_rate(config, 10.0)


def test_milestones_decay_after_the_given_epochs_as_local_loss_does():
    config = Config(lr=5e-4, lr_schedule="milestones", lr_milestones="200,300,350,375",
                    lr_decay=0.25, epochs=400)  # fmt: skip
    # their lr_scheduler: lr * fact ** bisect_right(milestones, epoch - 1), epoch from 1
    expected = {0: 5e-4, 199.9: 5e-4, 200: 1.25e-4, 299: 1.25e-4, 300: 3.125e-5, 375: 5e-4 / 256}
    for epoch, lr in expected.items():
        assert learning_rate(config, epoch) == pytest.approx(lr)
    for bad in ("300,200", "0,10", "ten"):
        with pytest.raises(ConfigError, match=f"lr_milestones: got '{bad}'; allowed: increasing"):
            config.replace(lr_milestones=bad)
    with pytest.raises(ConfigError, match="lr_milestones: got '10' with lr_schedule 'cosine'"):
        Config(lr_milestones="10")


def test_adam_is_each_modules_optimizer_when_asked(tmp_path, trainers):
    config = tiny(tmp_path, n_modules=2, optimizer="adam", lr=2e-3, weight_decay=0.0, epochs=2)
    optimizers = []

    def grab(event, info):
        if event == "epoch_end":
            optimizers.extend(learner.optimizer for learner in trainers[-1].learners.values())

    summary = run_experiment(config, callbacks=[grab])
    assert summary["status"] == "finished"
    assert summary["final_test_acc"] > 0.3  # chance: 0.1
    assert optimizers and all(type(o) is torch.optim.Adam for o in optimizers)
    assert all(o.param_groups[0]["weight_decay"] == 0.0 for o in optimizers)
    with pytest.raises(ConfigError, match="nesterov: got true with optimizer 'adam'"):
        Config(optimizer="adam", nesterov=True)


def test_he_conv_init_is_infopros_and_leaves_linears_at_pytorchs():
    torch.manual_seed(0)
    config = Config(arch="resnet32", dataset="cifar10", width=32, init="he-conv", n_modules=2,
                    objective="infopro")  # fmt: skip
    model = build_model(config)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) > 30  # the trunk's, the aux nets' and the decoders'
    for conv in convs:
        k, out = conv.kernel_size[0], conv.out_channels
        fan_in = conv.in_channels * k * k
        # He normal (fan out): std sqrt(2 / (k k out)); PyTorch's default is sqrt(1 / (3 fan_in))
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (k * k * out)), rel=0.2)
        assert abs(conv.weight.std().item() - math.sqrt(1 / (3 * fan_in))) > 0.01 or out < 8
    default = build_model(config.replace(init="default"))
    for a, b in zip(model.modules(), default.modules()):
        if isinstance(a, torch.nn.Linear):  # PyTorch's own init, drawn before the convs'
            assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_step_decay_restarts_momentum_only_when_asked(tmp_path, trainers):
    """With one batch per epoch and no weight decay, a fresh SGD's momentum buffer after the
    epoch is exactly that batch's gradient; a kept one also carries the previous epochs'."""
    common = dict(
        n_train=64, batch_size=64, epochs=2, n_modules=1, lr_schedule="step", lr_step=1,
        weight_decay=0.0, augment="none",
    )  # fmt: skip
    assert [restarts_momentum(Config(**common, momentum_restart=True), e) for e in (0, 1)] == [
        False,
        True,
    ]
    buffers = {}
    for restart in (True, False):
        config = tiny(tmp_path / str(restart), momentum_restart=restart, **common)
        trainer = None

        def grab(event, info, restart=restart):
            if event == "epoch_end" and info["global_epoch"] == 2:
                opt = trainers[-1].learners["0"].optimizer
                p = trainers[-1].model.trunk[0][0].conv.weight
                buffers[restart] = (opt.state[p]["momentum_buffer"].clone(), p.grad.clone())

        assert run_experiment(config, callbacks=[grab])["status"] == "finished"
        del trainer
    buf, grad = buffers[True]
    assert torch.equal(buf, grad)
    buf, grad = buffers[False]
    assert not torch.allclose(buf, grad)
    with pytest.raises(ConfigError, match="momentum_restart: got true with lr_schedule 'cosine'"):
        Config(momentum_restart=True, lr_schedule="cosine")


def test_nesterov_reaches_the_optimizer(tmp_path, trainers):
    config = tiny(tmp_path, n_modules=2, nesterov=True)
    assert run_experiment(config)["status"] == "finished"
    assert trainers[0].config.nesterov
    with pytest.raises(ConfigError, match="nesterov: got true with momentum 0"):
        Config(nesterov=True, momentum=0.0)


def test_summary_reports_top5_for_every_module(tmp_path):
    summary = run_experiment(tiny(tmp_path, n_modules=2, epochs=3, n_train=512, lr=0.1))
    top1, top5 = summary["per_module_test_acc"], summary["per_module_test_top5"]
    assert len(top5) == 2 and summary["final_test_top5"] == top5[-1]
    assert all(t5 >= t1 for t1, t5 in zip(top1, top5))
    assert top5[-1] > 0.8  # 10 classes: chance top-5 is 0.5
    test_rows = [r for r in read_metrics(tiny(tmp_path).out) if r["split"] == "test"]
    assert all(0 <= r["top5"] <= 1 for r in test_rows)


def test_trgl_protocol_takes_the_best_epoch_on_a_held_out_half(tmp_path):
    config = tiny(
        tmp_path,
        arch="resnet20",
        n_modules=2,
        method="parallel",
        epochs=3,
        n_test=200,
        eval_protocol="trgl-best",
    )
    summary = run_experiment(config)
    assert summary["status"] == "finished" and summary["eval_protocol"] == "trgl-best"
    assert summary["data"]["n_test"] == 100  # half of the 200 drawn
    assert "held-out half" in summary["test_split"]
    tests = [r for r in read_metrics(config.out) if r["split"] == "test"]
    best = max(tests, key=lambda r: r["acc"])  # every module, every epoch (parallel)
    assert summary["final_test_acc"] == best["acc"]
    assert (summary["best_epoch"], summary["best_module"]) == (best["global_epoch"], best["module"])
    assert summary["last_epoch_test_acc"] == summary["per_module_test_acc"][-1]
    last = run_experiment(config.replace(eval_protocol="last", out=str(tmp_path / "last")))
    assert last["eval_protocol"] == "last" and last["data"]["n_test"] == 200
    assert last["final_test_acc"] == last["per_module_test_acc"][-1]


def test_precise_bn_ends_chance_level_tests_after_short_training(tmp_path):
    """After a few dozen steps BN's running averages are still mostly their initial values: a
    module that trains well can test at chance. Re-estimating the statistics before evaluating
    gives the test accuracy its training accuracy suggests (last module, over three seeds)."""
    common = dict(arch="resnet20", n_modules=3, method="parallel", epochs=2, n_train=512)
    gaps: dict[bool, list[float]] = {False: [], True: []}
    for seed in (0, 1, 2):
        for precise in (False, True):
            config = tiny(
                tmp_path / f"{seed}-{precise}", precise_bn=precise, seed=seed, lr=0.1, **common
            )
            run_experiment(config)
            last = [r for r in read_metrics(config.out) if r["module"] == 3]
            train, test = last[-2]["acc"], last[-1]["acc"]  # the last epoch's
            assert train > 0.4  # it did learn (chance is 0.1)
            gaps[precise].append(train - test)
    assert max(gaps[False]) > 0.3  # the artifact: a module testing near chance
    assert max(gaps[True]) < 0.1


def test_precise_bn_leaves_parallel_training_untouched(tmp_path):
    """Training never reads running statistics: with no frozen prefix (parallel), the training
    rows are identical with and without the re-estimates."""
    common = dict(arch="resnet20", n_modules=3, method="parallel", epochs=2, n_train=256)
    rows = {}
    for precise in (False, True):
        config = tiny(tmp_path / str(precise), precise_bn=precise, **common)
        run_experiment(config)
        train = [r for r in read_metrics(config.out) if r["split"] == "train"]
        rows[precise] = [(r["module"], r["loss"], r["acc"]) for r in train]
    assert rows[False] == rows[True]


def test_cached_prefix_evaluation_reports_the_same_numbers(tmp_path, monkeypatch):
    """A sequential phase evaluates from its frozen prefix's test outputs: kept from the
    previous phase's last evaluation, or (when they do not fit) run once at the phase's start.
    Either way the recorded test numbers equal a full evaluation's, bit for bit."""
    from workbench.training import Trainer

    fields = dict(n_modules=3, epochs=2, augment="none")
    kept = tiny(tmp_path / "kept", **fields)
    run_experiment(kept)
    monkeypatch.setattr(Trainer, "keeps_outputs", lambda self, phase, epoch: False)
    built = tiny(tmp_path / "built", **fields)
    run_experiment(built)
    monkeypatch.setattr(Trainer, "build_test_cache", lambda self, phase: None)
    full = tiny(tmp_path / "full", **fields)
    run_experiment(full)
    rows = [
        [
            (r["module"], r["loss"], r["acc"], r["top5"])
            for r in read_metrics(c.out)
            if r["split"] == "test"
        ]
        for c in (kept, built, full)
    ]
    assert rows[0] == rows[1] == rows[2] and len(rows[0]) == 6
