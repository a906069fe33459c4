"""The engine's speed options change how fast, never what: checked on the CPU.

Their speed is measured by `workbench bench`, not asserted here. The CUDA-only paths (bf16 by
default, NHWC) run the same code as below; their speed and the GPU itself are not checked here.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
import torch
from conftest import tiny

from workbench import ConfigError, run_experiment
from workbench.data import Batches, load_data
from workbench.events import EPOCH_END
from workbench.models import build_model
from workbench.records import RunDir
from workbench.training import Trainer, device, engine

CPU = torch.device("cpu")


def _trainer(config) -> Trainer:
    data = load_data(config)
    return Trainer(config, RunDir(Path(config.out), config), build_model(config), data, CPU)


def _weights(run_dir, n_modules: int) -> list[dict[str, torch.Tensor]]:
    return [
        torch.load(run_dir / f"checkpoints/module_{k + 1}.pt")["trunk"] for k in range(n_modules)
    ]


def test_precision_auto_is_fp32_on_the_cpu(tmp_path):
    config = tiny(tmp_path, n_modules=2)
    assert device.run_precision(config, CPU).dtype is None
    assert device.run_precision(config.replace(precision="fp32"), CPU).dtype is None
    assert device.run_precision(config.replace(precision="bf16"), CPU).dtype is torch.bfloat16
    auto = run_experiment(config.replace(out=str(tmp_path / "auto")))
    fp32 = run_experiment(config.replace(out=str(tmp_path / "fp32"), precision="fp32"))
    assert auto["per_module_test_acc"] == fp32["per_module_test_acc"]
    for a, b in zip(_weights(tmp_path / "auto", 2), _weights(tmp_path / "fp32", 2)):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_asked_for_runs_the_forward_in_bf16_on_the_cpu(tmp_path, monkeypatch):
    """The autocast path CUDA takes by default, exercised on the CPU: training and evaluation."""
    dtypes: list[torch.dtype] = []
    original = Trainer.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.model.trunk[1].register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))

    monkeypatch.setattr(Trainer, "__init__", spy)
    summary = run_experiment(tiny(tmp_path, n_modules=2, precision="bf16", method="parallel"))
    assert summary["status"] == "finished"
    assert all(0 <= a <= 1 for a in summary["per_module_test_acc"])
    assert dtypes and set(dtypes) == {torch.bfloat16}  # training steps and evaluation alike


def _last_conv(model) -> torch.nn.Conv2d:  # many input channels: NCHW and NHWC differ
    return [m for m in model.trunk[-1].modules() if isinstance(m, torch.nn.Conv2d)][-1]


def test_nhwc_on_the_cpu_for_plain_trunks_not_for_resnets(tmp_path, trainers):
    """The CPU defaults the bench measured: NHWC for plain trunks (faster training and
    evaluation), NCHW for ResNets (slower training in NHWC); channels_last false is NCHW."""
    plain = run_experiment(tiny(tmp_path / "plain", n_modules=2, n_train=512))
    run_experiment(tiny(tmp_path / "resnet", n_modules=2, arch="resnet20", width=8))
    nchw = run_experiment(tiny(tmp_path / "nchw", n_modules=2, n_train=512, channels_last=False))
    formats = [
        _last_conv(t.model).weight.is_contiguous(memory_format=torch.channels_last)
        for t in trainers
    ]
    assert formats == [True, False, False]
    assert [t.memory_format == torch.channels_last for t in trainers] == [True, False, False]
    # the same arithmetic up to rounding: the same run learns the same, give or take a image
    assert plain["final_test_acc"] > 0.3
    for a, b in zip(plain["per_module_test_acc"], nchw["per_module_test_acc"]):
        assert abs(a - b) <= 0.03


def test_cached_sequential_run_equals_the_uncached_one(tmp_path):
    """Same seed, no augmentation: the cache serves the same prefix outputs in the same order.

    On this CPU the two runs end bit-identical; the cache is computed in eval mode with the
    training batch size, so it is the same arithmetic. (A GPU may choose other kernels for
    the cache's batches and differ in rounding.)
    """
    config = tiny(tmp_path, n_modules=3, epochs=2, augment="none")
    plain = run_experiment(config.replace(out=str(tmp_path / "plain")))
    cached = run_experiment(config.replace(out=str(tmp_path / "cached"), cache_features=True))
    assert cached["per_module_test_acc"] == plain["per_module_test_acc"]
    for a, b in zip(_weights(tmp_path / "plain", 3), _weights(tmp_path / "cached", 3)):
        assert all(torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=1e-6) for k in a)


def test_a_resumed_cached_run_ends_where_an_unbroken_uncached_one_does(tmp_path):
    """The cache is rebuilt from the restored weights and continues the data order."""
    stop = threading.Event()

    def stop_mid_module_2(event, info):
        if event == EPOCH_END and info["global_epoch"] == 3:
            stop.set()

    config = tiny(tmp_path, n_modules=3, epochs=2, augment="none", cache_features=True)
    unbroken = run_experiment(config.replace(out=str(tmp_path / "plain"), cache_features=False))
    assert run_experiment(config, callbacks=[stop_mid_module_2], stop=stop)["status"] == "stopped"
    resumed = run_experiment(config)
    assert resumed["resumed_from"] == {"phase": 1, "epochs_done": 1}
    assert resumed["per_module_test_acc"] == unbroken["per_module_test_acc"]


def test_module_k_trains_on_exactly_the_prefix_outputs(tmp_path):
    """The cache holds trunk[:k](x) of every image, batched in the training order."""
    config = tiny(tmp_path, n_modules=3, augment="none", cache_features=True)
    trainer = _trainer(config)
    calls: list[int] = []
    trainer.model.trunk[0].register_forward_hook(lambda m, i, o: calls.append(len(o)))
    phase = trainer.phases[2]  # module 3: modules 1 and 2 are its frozen prefix
    trainer.begin_phase(phase)
    # the prefix ran once over every training image (the cache), and once over every test
    # image (evaluation's cache)
    assert trainer.cache is not None and trainer.test_features is not None
    assert sum(calls) == len(trainer.data.train_y) + len(trainer.data.test_y)
    # the batches the uncached run would see in this epoch
    reference = Batches(
        trainer.data.train_x,
        trainer.data.train_y,
        batch_size=config.batch_size,
        device=CPU,
        mean=trainer.data.mean,
        std=trainer.data.std,
        shuffle=True,
        seed=config.seed,
    )
    reference.epoch = trainer.train_batches.epoch
    trainer.model.eval()
    n = 0
    for (features, y), (x, y_ref) in zip(trainer.cache, reference, strict=True):
        with torch.no_grad():
            expected = trainer.model.trunk[1](trainer.model.trunk[0](x))
        assert torch.equal(y, y_ref)
        assert torch.allclose(features, expected, rtol=0, atol=1e-6)
        n += len(y)
    assert n == len(trainer.data.train_y)
    assert trainer.train_batches.epoch == reference.epoch  # resumes continue the same order
    calls.clear()
    trainer.train_pass(phase, 0)
    assert calls == []  # training module 3 ran no frozen module


def test_cache_features_with_augmentation_is_refused_before_anything_runs(tmp_path):
    config = tiny(tmp_path, cache_features=True, augment="crop")
    with pytest.raises(ConfigError, match=r"^cache_features: got true with augment='crop'"):
        run_experiment(config)
    assert not (tmp_path / "run").exists()
    # the dataset's own augmentation counts too, and is refused before the data is looked for
    cifar = config.replace(dataset="cifar10", augment="auto", data_dir=str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="augment='crop-flip'") as refused:
        run_experiment(cifar)
    assert "\n" not in str(refused.value)


def test_cache_over_the_memory_budget_falls_back_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "free_memory_bytes", lambda device: 1000)
    config = tiny(tmp_path, n_modules=2, augment="none", cache_features=True)
    with pytest.warns(RuntimeWarning, match="cache_features: module 2's inputs .* without the"):
        summary = run_experiment(config)
    plain = run_experiment(config.replace(cache_features=False, out=str(tmp_path / "plain")))
    assert summary["per_module_test_acc"] == plain["per_module_test_acc"]


def test_finished_modules_release_their_gradients_and_optimizer(tmp_path, trainers):
    """Sequential holds the state of the module it trains only: the memory the papers claim."""
    seen: list[tuple[list[str], list[bool]]] = []

    def on_epoch(event, info):
        if event == EPOCH_END:
            t = trainers[0]
            grads = [
                any(p.grad is not None for p in t.model.trunk[k].parameters()) for k in range(3)
            ]
            seen.append((sorted(t.learners), grads))

    run_experiment(tiny(tmp_path, n_modules=3), callbacks=[on_epoch])
    assert seen == [
        (["0"], [True, False, False]),
        (["1"], [False, True, False]),
        (["2"], [False, False, True]),
    ]


def test_compile_runs_a_tiny_experiment_and_learns(tmp_path):
    """torch.compile on the CPU needs a C++ compiler (inductor); about a minute on 2 cores."""
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        pytest.skip("torch.compile on the CPU needs a C++ compiler; none on PATH")
    config = tiny(
        tmp_path, n_modules=1, epochs=3, n_train=512, method="parallel", compile=True,
        lr_schedule="constant",
    )  # fmt: skip
    summary = run_experiment(config)
    assert summary["status"] == "finished"
    assert summary["per_module_test_acc"][0] > 0.4  # chance is 0.1; eager reaches about 0.7
