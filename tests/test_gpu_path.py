"""The CUDA path's decisions, checked on the CPU: precision by compute capability, fp16 with a
loss scaler, the eval-mode sizing pass, precise BN without device reads, no sync inside a step,
memory a run frees, its own peak, the allocator's cache, the CUDA settings made and put back.

What only a GPU can show (the syncs torch itself makes, memory on the device) is checked by
`workbench doctor` and tests/test_cuda.py where there is one.
"""

from __future__ import annotations

import gc
import json
import math
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny

from workbench import Config, run_experiment
from workbench.data import load_data
from workbench.events import EPOCH_END, PROGRESS, RUN_START
from workbench.local.optim import make_optimizer, update
from workbench.memory import cuda_free_bytes, peak_memory_bytes, reset_peak_memory
from workbench.models import build_model
from workbench.records import RunDir, RunFailed, read_metrics
from workbench.training import Trainer, device, engine, estimate
from workbench.training.evaluation import eval_batch_size_within, largest_output_bytes
from workbench.training.pipeline import shared_gpus, worker_devices

CPU = torch.device("cpu")


# -- precision ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "capability, name",
    [
        (None, "fp32"),  # the CPU
        ((5, 2), "fp32"),  # Maxwell: no tensor cores
        ((6, 0), "fp32"),  # P100
        ((6, 1), "fp32"),  # GTX 10xx
        ((7, 0), "fp16"),  # V100
        ((7, 5), "fp16"),  # T4, RTX 20xx
        ((8, 0), "bf16"),  # A100
        ((8, 6), "bf16"),  # RTX 30xx
        ((8, 9), "bf16"),  # L4, RTX 40xx
        ((9, 0), "bf16"),  # H100, H200
        ((10, 0), "bf16"),  # B200
    ],
)
def test_precision_auto_follows_the_compute_capability(capability, name):
    chosen = device.choose_precision("auto", capability)
    assert chosen.name == name
    assert chosen.scaled == (name == "fp16")  # fp16's gradients are scaled, bf16's need not be
    assert chosen.dtype == {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    where = "the CPU" if capability is None else "compute capability {}.{}".format(*capability)
    assert chosen.reason.startswith(f"auto on {where}")


def test_an_explicit_precision_is_taken_as_asked_and_says_so():
    for asked in ("fp32", "bf16", "fp16"):
        for capability in (None, (7, 5), (9, 0)):
            chosen = device.choose_precision(asked, capability)
            assert chosen.name == asked and f"precision={asked} asked for" in chosen.reason
    assert "emulated" in device.choose_precision("bf16", (7, 5)).reason
    assert "emulated" not in device.choose_precision("bf16", (8, 0)).reason


def test_tf32_is_in_effect_only_where_asked_and_the_gpu_has_it():
    assert device.tf32_in_effect(True, (8, 0)) and device.tf32_in_effect(True, (9, 0))
    assert not device.tf32_in_effect(True, (7, 5))  # no TF32 tensor cores
    assert not device.tf32_in_effect(True, None)
    assert not device.tf32_in_effect(False, (9, 0))


def test_a_cuda_run_sets_the_autotuner_and_one_tf32_choice_and_puts_them_back():
    assert device.backend_settings(CPU, True) == []  # the CPU's runs touch no global setting
    cuda = torch.device("cuda", 0)  # a device object only: nothing runs on it
    for tf32 in (True, False):
        settings = device.backend_settings(cuda, tf32)
        assert settings[0] == (torch.backends.cudnn, "benchmark", True)
        values = {value for _, _, value in settings[1:]}  # convolutions and matmuls alike
        assert len(settings) == 3 and values in ({"tf32" if tf32 else "ieee"}, {tf32})
    before = [getattr(obj, name) for obj, name, _ in device.backend_settings(cuda, True)]
    with device.applied(device.backend_settings(cuda, True)):
        assert torch.backends.cudnn.benchmark is True
        inside = [getattr(obj, name) for obj, name, _ in device.backend_settings(cuda, True)]
        assert inside == [value for _, _, value in device.backend_settings(cuda, True)]
    after = [getattr(obj, name) for obj, name, _ in device.backend_settings(cuda, True)]
    assert after == before


def test_the_summary_records_what_ran_and_why(tmp_path):
    summary = run_experiment(tiny(tmp_path, n_modules=1))
    assert summary["precision"] == "fp32"
    assert summary["precision_reason"].startswith("auto on the CPU")
    assert summary["tf32"] is False


# -- fp16 with a loss scaler ----------------------------------------------------------------------
def _tiny_net() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    return net, torch.randn(8, 1, 4, 4), torch.randint(0, 4, (8,))


def test_a_scaled_step_with_an_inf_gradient_is_skipped_and_the_next_one_applies(tmp_path):
    net, x, y = _tiny_net()
    optimizer = make_optimizer(net.parameters(), tiny(tmp_path), fused=True)
    scaler = torch.amp.GradScaler("cpu")
    poison = {"on": True}
    net[1].weight.register_hook(lambda g: g * math.inf if poison["on"] else g)

    def step() -> bool:
        with torch.autocast("cpu", torch.float16):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        skipped = update(loss, optimizer, scaler)
        assert skipped is not None and skipped.device == x.device  # no host read in update
        return bool(skipped)

    before = [p.detach().clone() for p in net.parameters()]
    scale = scaler.get_scale()
    assert step() is True
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # nothing moved
    assert scaler.get_scale() == scale / 2  # the scaler backs off and tries again
    poison["on"] = False
    assert step() is False
    assert not torch.equal(before[0], net[1].weight)  # the clean step trained


def test_update_without_a_scaler_is_plain_sgd(tmp_path):
    net, x, y = _tiny_net()
    twin, _, _ = _tiny_net()
    config = tiny(tmp_path)
    loss = torch.nn.functional.cross_entropy(net(x), y)
    assert update(loss, make_optimizer(net.parameters(), config)) is None
    reference = torch.optim.SGD(
        twin.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    torch.nn.functional.cross_entropy(twin(x), y).backward()
    reference.step()
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), twin.parameters()))


def test_fp16_trains_with_a_loss_scaler_on_the_cpu_and_resumes_it(tmp_path):
    config = tiny(tmp_path, n_modules=2, precision="fp16", method="parallel", epochs=2)
    summary = run_experiment(config)
    assert summary["status"] == "finished" and summary["precision"] == "fp16"
    assert summary["per_module_test_acc"][-1] > 0.3  # chance is 0.1
    train_rows = [r for r in read_metrics(config.out) if r["split"] == "train"]
    assert all(isinstance(r["skipped_steps"], int) for r in train_rows)
    last = torch.load(Path(config.out) / "checkpoints" / "last.pt", weights_only=True)
    assert set(last["scalers"]) == {"0", "1"} and last["scalers"]["0"]["scale"] > 0


def _poison_gradients(trainers: list, when) -> callable:
    """A RUN_START callback putting an inf into module 1's first weight gradient at the steps
    `when(step)` says."""
    calls = {"n": 0}

    def hook(grad: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return grad * math.inf if when(calls["n"]) else grad

    def on_start(event: str, info: dict) -> None:
        if event == RUN_START:
            next(trainers[0].model.trunk[0].parameters()).register_hook(hook)

    return on_start


def test_a_step_the_scaler_skips_is_not_a_divergence(tmp_path, trainers):
    config = tiny(tmp_path, n_modules=2, precision="fp16", method="parallel")
    summary = run_experiment(config, callbacks=[_poison_gradients(trainers, lambda n: n == 2)])
    assert summary["status"] == "finished", summary.get("error")
    rows = [r for r in read_metrics(config.out) if r["split"] == "train"]
    assert rows[0]["module"] == 1 and rows[0]["skipped_steps"] >= 1
    assert all(math.isfinite(r["loss"]) for r in rows)


def test_fp16_gradients_that_never_recover_fail_as_diverged(tmp_path, trainers):
    config = tiny(tmp_path, n_modules=2, precision="fp16", method="parallel", batch_size=8)
    poison = _poison_gradients(trainers, lambda n: True)  # 32 steps, every one skipped
    with pytest.raises(RunFailed, match=r"module 1's fp16 gradients stayed infinite"):
        run_experiment(config, callbacks=[poison])
    assert json.loads((Path(config.out) / "summary.json").read_text())["status"] == "failed"


def test_fp16_with_a_loss_that_explodes_fails_as_diverged(tmp_path):
    with pytest.raises(RunFailed, match=r"training diverged: module 1's loss is NaN"):
        run_experiment(tiny(tmp_path, n_modules=2, precision="fp16", lr=1e6))


# -- the test-batch sizing pass -------------------------------------------------------------------
def test_the_sizing_pass_runs_in_eval_mode_and_moves_no_batchnorm():
    """A trunk that reaches a 1x1 map with BN: in training mode this pass raised 'Expected more
    than 1 value per channel', and every BN's statistics moved towards a zero image's."""
    config = Config(arch="greedy-cnn", n_modules=6, schedule="1,2,3,4,5", device="cpu")
    model = build_model(config, 10)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in norms:  # statistics a zero image would visibly move
        bn.running_mean.fill_(3.0)
    before = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in norms]
    sample = torch.zeros(1, 1, 32, 32)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        with torch.no_grad():  # what the pass did before: the trunk in training mode
            x = sample
            for module in model.trunk:
                x = module(x)
    for bn, (mean, var) in zip(norms, before):  # put back what that attempt moved
        bn.running_mean.copy_(mean), bn.running_var.copy_(var)
    model.train()
    biggest = largest_output_bytes(model, sample)
    assert model.training  # the mode is put back
    assert biggest == 32 * 16 * 16 * 4  # the first module's output: 32 channels at 16x16, fp32
    for bn, (mean, var) in zip(norms, before):
        assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)


def test_eval_batches_fit_an_eighth_of_free_memory_within_bounds():
    assert eval_batch_size_within(8 * 4 * 1000 * 100, 1000, 64) == 100
    assert eval_batch_size_within(8 * 4 * 1000 * 10, 1000, 64) == 64  # never below training's
    assert eval_batch_size_within(2**40, 1000, 64) == 1024  # nor above EVAL_BATCH_MAX


# -- precise BN -----------------------------------------------------------------------------------
def test_precise_bn_is_bit_for_bit_the_cumulative_average(tmp_path):
    """momentum 1/n at batch n, set from the host, against momentum None (which reads the
    batch count from the device at every BN call): the same statistics, bit for bit."""
    config = tiny(tmp_path, n_modules=2, n_train=640, method="parallel", batch_size=16)
    data = load_data(config)
    trainer = Trainer(config, RunDir(Path(config.out), config), build_model(config), data, CPU)
    phase = trainer.phases[0]
    trainer.train_pass(phase, 0)  # trained weights, so the statistics are not trivial
    reference = build_model(config)
    reference.load_state_dict(trainer.model.state_dict())
    reference.to(memory_format=trainer.memory_format)  # the same kernels
    norms = [m for m in reference.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    reference.train()
    batches, _ = trainer.statistics_inputs(phase)
    n_batches = 0
    with torch.no_grad():
        for x, _ in batches:
            n_batches += 1
            x = x.contiguous(memory_format=trainer.memory_format)
            for k in range(2):
                x = reference.trunk[k](x)
                reference.heads[k](x)
    assert n_batches > 1  # a cumulative average over several batches
    trainer.refresh_batchnorm(phase)
    ours = [m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(ours) == len(norms) > 0
    for a, b in zip(ours, norms):
        assert torch.equal(a.running_mean, b.running_mean)
        assert torch.equal(a.running_var, b.running_var)
        assert a.momentum == 0.1  # put back for training
        assert int(a.num_batches_tracked) == n_batches


# -- no device sync inside a step -----------------------------------------------------------------
def test_no_device_sync_inside_a_step_with_live_progress(tmp_path, monkeypatch):
    """Every sync the run makes is counted (the clock's and the Trainer's are one function);
    with PROGRESS events after every step, a training pass still syncs only where the time
    estimate's probe does (twice in the run), not once per event."""
    syncs = {"n": 0}

    def counting_synchronizer(dev: torch.device):
        def sync() -> None:
            syncs["n"] += 1

        return sync

    monkeypatch.setattr(engine, "synchronizer", counting_synchronizer)
    monkeypatch.setattr(estimate, "PROGRESS_EVERY_S", 0.0)  # an event after every step
    inside: list[int] = []
    original = Trainer.train_pass

    def counted_pass(self, phase, epoch):
        before = syncs["n"]
        out = original(self, phase, epoch)
        inside.append(syncs["n"] - before)
        return out

    monkeypatch.setattr(Trainer, "train_pass", counted_pass)
    events: list[str] = []
    config = tiny(tmp_path, n_modules=2, method="parallel", epochs=2, batch_size=16)
    run_experiment(config, callbacks=[lambda event, info: events.append(event)])
    steps = 2 * 256 // 16
    assert events.count(PROGRESS) >= steps  # the callbacks ran inside the loop, every step
    assert sum(inside) <= 2, inside  # the probe's two; before, one per PROGRESS event
    assert syncs["n"] > sum(inside)  # the clock does sync outside the steps (evaluate, ...)


# -- memory ----------------------------------------------------------------------------------
def _watch(monkeypatch) -> list[weakref.ref]:
    """Weak references to what run_experiment builds: the Trainer, its model, the data."""
    refs: list[weakref.ref] = []
    from workbench.training import run as run_module

    build, load, init = run_module.build_model, run_module.load_data, Trainer.__init__

    def watched_build(*args, **kwargs):
        model = build(*args, **kwargs)
        refs.append(weakref.ref(model))
        return model

    def watched_load(config):
        data = load(config)
        refs.extend([weakref.ref(data), weakref.ref(data.train_x)])
        return data

    def watched_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        refs.extend([weakref.ref(self), weakref.ref(self.train_batches)])

    monkeypatch.setattr(run_module, "build_model", watched_build)
    monkeypatch.setattr(run_module, "load_data", watched_load)
    monkeypatch.setattr(Trainer, "__init__", watched_init)
    return refs


@pytest.mark.parametrize("ending", ["finished", "stopped", "failed"])
def test_a_run_frees_what_it_held_when_it_returns(tmp_path, monkeypatch, ending):
    """With the cyclic garbage collector off, nothing of a run outlives run_experiment: a
    reference cycle would keep a GPU run's model and resident data on the device."""
    refs = _watch(monkeypatch)
    stop = threading.Event()
    config = tiny(tmp_path, n_modules=2, lr=1e6 if ending == "failed" else 0.05)

    def stop_after_an_epoch(event: str, info: dict) -> None:
        if event == EPOCH_END and ending == "stopped":
            stop.set()

    gc.collect()
    gc.disable()
    try:
        try:
            summary = run_experiment(config, callbacks=[stop_after_an_epoch], stop=stop)
            assert summary["status"] == ending
        except RunFailed:
            assert ending == "failed"
        alive = [r() for r in refs if r() is not None]
        assert len(refs) == 5 and not alive, [type(a).__name__ for a in alive]
    finally:
        gc.enable()


def test_a_runs_peak_memory_is_its_own_not_the_process_s(tmp_path):
    """A notebook's second run reports its own peak, not the largest of any earlier run."""
    spike = np.ones(2**30 // 8)  # 1 GiB touched, then freed: the process's peak so far
    del spike
    reset_peak_memory(CPU)
    baseline = peak_memory_bytes(CPU)
    spike = np.ones(2**30 // 8)
    assert peak_memory_bytes(CPU) > baseline + 2**29
    del spike
    summary = run_experiment(tiny(tmp_path, n_modules=1))
    assert summary["peak_memory_bytes"] < baseline + 2**29  # a tiny run: far below the spike


def test_free_memory_on_a_gpu_counts_the_allocators_unused_cache():
    gib = 2**30
    assert cuda_free_bytes(driver_free=1 * gib, reserved=3 * gib, allocated=1 * gib) == 3 * gib
    assert cuda_free_bytes(driver_free=1 * gib, reserved=0, allocated=0) == gib


# -- the pipeline's GPUs -----------------------------------------------------------------------
def test_pipeline_modules_share_gpus_round_robin_and_say_so():
    cuda = torch.device("cuda", 0)
    assert worker_devices(cuda, 3, n_gpus=2) == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_devices(CPU, 2) == ["cpu", "cpu"]
    line = shared_gpus(["cuda:0", "cuda:1", "cuda:0"])
    assert line is not None and "modules 1, 3 on cuda:0" in line and "\n" not in line
    assert shared_gpus(["cuda:0", "cuda:1"]) is None
    assert shared_gpus(["cpu", "cpu"]) is None  # CPU workers have their own threads
