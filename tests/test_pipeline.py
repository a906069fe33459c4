"""DGL's modules in worker processes (pipeline true): real spawned processes on the CPU."""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import signal
import threading
import time

import pytest
import torch
from conftest import tiny

from workbench import run_experiment
from workbench.cli import main
from workbench.config import Config, ConfigError
from workbench.events import EPOCH_END
from workbench.local.objective import LocalInputs
from workbench.models import build_model
from workbench.records import RunFailed, read_metrics
from workbench.training.pipeline_worker import (
    QUEUE_DEPTH,
    Inbox,
    ReplayBuffer,
    staleness_bound,
    worker_learner,
)


def _workers() -> list:
    return [p for p in multiprocessing.active_children() if p.name.startswith("workbench-module")]


def _pipelined(tmp_path, **fields) -> Config:
    values = dict(method="parallel", pipeline=True, n_modules=2, n_train=768, n_test=300)
    return tiny(tmp_path, **{**values, **fields})


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize(
    "fields, starts",
    [
        (dict(method="sequential", pipeline=True), "pipeline: got true with method 'sequential'"),
        (dict(method="parallel", replay_buffer=4), "replay_buffer: got 4 with pipeline false"),
        (dict(method="parallel", pipeline=True, replay_buffer=-1), "replay_buffer: got -1"),
    ],
)
def test_bad_pipeline_settings_are_refused_in_one_line(fields, starts):
    with pytest.raises(ConfigError) as e:
        Config(**fields)
    assert str(e.value).startswith(starts) and "allowed" in str(e.value)
    assert "\n" not in str(e.value)


def test_cli_refuses_a_pipeline_for_sequential(capsys):
    assert main(["run", "--method", "sequential", "--pipeline", "true", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pipeline: got true with method 'sequential'" in err and err.count("\n") == 1


def test_a_worker_step_passes_no_gradient_across_the_boundary():
    """Module 2's step on module 1's output changes module 2 only: module 1's weights and
    gradients stay as its own step left them, and what it hands on is a detached leaf."""
    config = Config(method="parallel", n_modules=2, width=8, device="cpu")
    model = build_model(config)
    first = worker_learner(config, 0, model.trunk[0], model.heads[0], "cpu")
    second = worker_learner(config, 1, model.trunk[1], model.heads[1], "cpu")
    x, y = torch.randn(16, 1, 32, 32), torch.randint(0, 10, (16,))
    result = first.step(LocalInputs(x, y), lr=0.1)
    out = result.output
    assert not out.requires_grad and out.is_leaf and out.grad_fn is None
    assert result.skipped is None  # fp32: no loss scaler
    assert bool(torch.isfinite(result.loss[0])) and 0 <= int(result.correct[0]) <= 16
    assert result.reported[0].item() > 0

    weights = _state(model.trunk[0]) | {f"head.{k}": v for k, v in _state(model.heads[0]).items()}
    grads = [p.grad.clone() for p in first.optimizer.param_groups[0]["params"]]
    second_before = _state(model.trunk[1])
    second.step(LocalInputs(out, y), lr=0.1)
    after = _state(model.trunk[0]) | {f"head.{k}": v for k, v in _state(model.heads[0]).items()}
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    params = first.optimizer.param_groups[0]["params"]
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, params))
    assert any(not torch.equal(v, model.trunk[1].state_dict()[k]) for k, v in second_before.items())

    with pytest.raises(RuntimeError, match="requires grad"):
        second.step(LocalInputs(out.requires_grad_(), y), lr=0.1)  # no graph reaches a module


@pytest.mark.parametrize("channels_last", [True, False])
def test_a_workers_head_takes_its_trunks_layout(channels_last):
    """The trunk's output reaches the head in the worker's memory format, so the head's
    convolutions are in it too (an NCHW head on NHWC inputs converts every batch)."""
    config = Config(method="parallel", n_modules=2, width=8, aux_type="cnn", aux_depth=2)
    config = config.replace(channels_last=channels_last)
    model = build_model(config)
    learner = worker_learner(config, 0, model.trunk[0], model.heads[0], "cpu")
    wanted = torch.channels_last if channels_last else torch.contiguous_format
    kernels = [p for p in learner.parameters() if p.dim() == 4]
    assert any(p.shape[-1] > 1 for p in learner.heads[0].parameters() if p.dim() == 4)  # 3x3
    assert kernels and all(p.is_contiguous(memory_format=wanted) for p in kernels)


def test_replay_buffer_samples_the_least_used_then_the_freshest():
    """DGL's priority_lifo: fresh batches first, newest first; then reuse; the oldest is
    overwritten when the ring is full."""
    ring = ReplayBuffer(3)
    assert ring.sample(0.01) == (None, None)  # empty: nothing after the timeout
    for step in range(3):
        ring.add(step)
    picks = [ring.sample(0.01)[0] for _ in range(4)]
    assert picks == [2, 1, 0, 2]
    ring.add(3)  # overwrites batch 0
    picks = [ring.sample(0.01)[0] for _ in range(3)]
    assert picks == [3, 3, 1]  # 3 fresh; then 3 again (newest of the once-used), then 1
    assert sorted(ring.slots) == [1, 2, 3]


@pytest.mark.parametrize("replay, producer_sleep", [(3, 0.001), (3, 0.02), (0, 0.001)])
def test_an_inbox_never_hands_out_a_batch_older_than_its_bound(replay, producer_sleep):
    """A real torch.multiprocessing queue between a producer (a thread here, fast or slow)
    and an Inbox that takes slowly or quickly: every batch taken is at most
    replay_buffer + QUEUE_DEPTH of the producer's steps old, counted as the worker does."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q, produced, stop = ctx.Queue(QUEUE_DEPTH), ctx.Value("q", 0, lock=False), ctx.Event()
    config = Config(method="parallel", pipeline=True, replay_buffer=replay)
    bound = staleness_bound(config)

    def produce() -> None:
        step = 0
        while not stop.is_set():
            try:
                q.put((step, torch.full((2,), float(step)), torch.zeros(2), None), timeout=0.05)
            except queue.Full:
                continue
            step += 1
            produced.value = step
            time.sleep(producer_sleep)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    inbox = Inbox(q, produced, replay, stop)
    try:
        taken = []
        for _ in range(60):
            step, x, _, _, age = inbox.take()
            assert x[0].item() == step  # the batch is the one its step index names
            taken.append((step, age))
            time.sleep(0.002 if producer_sleep > 0.01 else 0.01)  # faster than it, or slower
    finally:
        stop.set()
        producer.join(5)
        q.cancel_join_thread()
    assert not producer.is_alive()
    assert max(age for _, age in taken) <= bound
    steps = [s for s, _ in taken]
    if replay == 0:  # lockstep: every batch once, in order
        assert steps == list(range(60))
    elif producer_sleep > 0.01:  # a slow producer: batches are reused rather than waited for
        assert len(set(steps)) < len(steps)
    else:  # a fast producer: old batches are skipped, fresh ones trained on
        assert steps[-1] > 60


def test_pipelined_parallel_learns_and_matches_one_process(tmp_path, trainers):
    """Two workers, one module each: the modules learn (chance is 10%), the run folder is a
    run folder, and in lockstep the numbers are the single-process run's: same batches, same
    initial weights, same steps, one thread on both sides, so the same floats."""
    config = _pipelined(tmp_path, epochs=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 1 thread here, so 1 per worker: the same kernels and rounding
    try:
        piped = run_experiment(config)
        assert _workers() == []  # every worker stopped
        alone = run_experiment(config.replace(pipeline=False, out=str(tmp_path / "alone")))
    finally:
        torch.set_num_threads(threads)

    assert piped["status"] == "finished" and min(piped["per_module_test_acc"]) > 0.6, piped
    assert piped["pipeline"] is True and piped["replay_buffer"] == 0
    assert piped["pipeline_workers"] == [
        {"module": k, "device": "cpu", "threads": 1} for k in (1, 2)
    ]
    bound = piped["pipeline_staleness_bound"]
    assert bound == QUEUE_DEPTH and max(piped["pipeline_staleness_max"]) <= bound
    # each worker's own peak, and the run's: this process's and its workers' on one device
    worker_peaks = piped["pipeline_peak_memory_bytes"]
    assert len(worker_peaks) == 2 and min(worker_peaks) > 0
    assert piped["peak_memory_bytes"] > sum(worker_peaks)
    on_disk = json.loads((tmp_path / "run" / "config.json").read_text())
    assert on_disk["pipeline"] is True and on_disk["replay_buffer"] == 0
    for name in ("last.pt", "module_1.pt", "module_2.pt"):
        assert (tmp_path / "run" / "checkpoints" / name).exists()

    rows, alone_rows = read_metrics(tmp_path / "run"), read_metrics(tmp_path / "alone")
    assert [(r["module"], r["split"], r["epoch"]) for r in rows] == [
        (r["module"], r["split"], r["epoch"]) for r in alone_rows
    ]
    for r, a in zip(rows, alone_rows):
        assert r["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5), (r, a)
        assert r["acc"] == pytest.approx(a["acc"], abs=1e-3), (r, a)
    assert piped["per_module_test_acc"] == pytest.approx(alone["per_module_test_acc"], abs=1e-3)

    # module 2 trained on every one of module 1's outputs once, in order (lockstep)
    pipelined = next(t for t in trainers if t.config.pipeline)
    last_epoch = pipelined.driver.last_epoch_steps[1]
    n = len(last_epoch)
    assert [step for step, _ in last_epoch] == list(range(n, 2 * n))
    assert all(0 <= age <= bound for _, age in last_epoch)


def test_replay_buffer_run_learns_within_its_staleness_bound(tmp_path, trainers):
    config = _pipelined(tmp_path, replay_buffer=3, epochs=2)
    summary = run_experiment(config)
    assert _workers() == []
    assert summary["status"] == "finished" and summary["replay_buffer"] == 3
    assert min(summary["per_module_test_acc"]) > 0.5, summary["per_module_test_acc"]
    bound = staleness_bound(config)
    assert summary["pipeline_staleness_bound"] == bound == 3 + QUEUE_DEPTH
    assert max(summary["pipeline_staleness_max"]) <= bound
    steps = next(t for t in trainers if t.config.pipeline).driver.last_epoch_steps
    assert all(age <= bound for module in steps for _, age in module)
    assert len(read_metrics(tmp_path / "run")) == 2 * 2 * 2  # train + test, 2 modules, 2 epochs


def test_stop_flag_and_ctrl_c_stop_every_worker_and_the_run_resumes(tmp_path):
    stop = threading.Event()

    def stop_after_epoch_1(event, info):
        if event == EPOCH_END and info["global_epoch"] == 1:
            stop.set()

    config = _pipelined(tmp_path, epochs=2, n_train=256)
    start = time.monotonic()
    first = run_experiment(config, callbacks=[stop_after_epoch_1], stop=stop)
    assert first["status"] == "stopped" and _workers() == []
    assert time.monotonic() - start < 60

    def interrupt(event, info):
        if event == EPOCH_END:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main process

    second = run_experiment(config.replace(out=str(tmp_path / "other")), callbacks=[interrupt])
    assert second["status"] == "stopped" and _workers() == []

    resumed = run_experiment(config)
    assert resumed["status"] == "finished" and _workers() == []
    assert resumed["resumed_from"] == {"phase": 0, "epochs_done": 1}
    assert [r["global_epoch"] for r in read_metrics(tmp_path / "run")] == [1] * 4 + [2] * 4


def test_a_worker_that_dies_fails_the_run_in_one_line(tmp_path):
    def kill_module_2(event, info):
        if event == EPOCH_END:
            (worker,) = [p for p in _workers() if p.name == "workbench-module-2"]
            os.kill(worker.pid, signal.SIGKILL)

    config = _pipelined(tmp_path, epochs=2, n_train=256)
    with pytest.raises(RunFailed) as e:
        run_experiment(config, callbacks=[kill_module_2])
    assert str(e.value).startswith("pipeline: module 2's worker process ended unexpectedly")
    assert _workers() == []
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["status"] == "failed" and "module 2" in on_disk["error"]
