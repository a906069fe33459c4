"""`run_experiment(config)`: the one entry point the CLI, the notebooks and papermill call."""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any

import torch

from workbench.config import Config
from workbench.data import ImageData, load_data
from workbench.events import RUN_END, Callback, StopRequested
from workbench.local.objectives import objective_class
from workbench.memory import reset_peak_memory
from workbench.models import build_model
from workbench.records import RunDir, Status, WriteError
from workbench.summary import Summary
from workbench.training.backends import InProcess
from workbench.training.device import (
    applied,
    backend_settings,
    check_speed_options,
    device_capability,
    resolve_device,
    tf32_in_effect,
)
from workbench.training.distributed import (
    join,
    open_run,
    sync_strategy,
    under_torchrun,
    watchers,
    world_size,
)
from workbench.training.engine import Trainer
from workbench.training.memory_estimate import MemoryEstimate, estimate_memory, refuse_if_too_big
from workbench.training.pipeline import Pipelined
from workbench.training.stop_signals import stop_on_signals
from workbench.training.timing import Clock


def run_experiment(
    config: Config,
    callbacks: Sequence[Callback] = (),
    stop: threading.Event | None = None,
    check_memory: bool = True,
) -> dict[str, Any]:
    """Train `config` into its run folder and return the summary (also in summary.json).

    Everything that can be refused (device, data, run folder) is checked before training.
    The run holds its folder's lock until it returns or raises: a second run on the folder is
    refused, naming this one. A run folder holding an unfinished run of the same config
    resumes from its checkpoint; a finished one is returned as it is. Stopping (the flag, or
    SIGINT, SIGTERM or SIGHUP once training is under way: stop_signals.py) leaves status
    'stopped'; a diverged run or a failed write leaves 'failed', with the error, and raises
    (RunFailed: one line for the user). The run's peak memory is estimated before training
    (memory_estimate.py) and recorded; a config whose estimate does not fit in what the device
    has available is refused (MemoryRefused) unless `check_memory` is False, and an allocation
    that fails in training ends the run as failed, naming where.
    """
    stop = stop if stop is not None else threading.Event()
    clock = Clock()
    device = resolve_device(config.device)
    check_speed_options(config)
    objective_class(config.objective).check(config)  # what only the objective knows it needs
    with clock.part("data"):
        data = load_data(config)
    memory = memory_estimate(config, data, device)
    if check_memory and memory is not None:
        refuse_if_too_big(memory, config, device)
    # under torchrun: this process's rank joins the others, and rank 0 writes the run folder
    with stop_on_signals(stop) as signals, join(device) as ranks, open_run(config, ranks) as run:
        device = ranks.device if ranks else device
        reset_peak_memory(device)  # this run's peak, not the largest of any run in this process
        previous = run.read_summary()
        if previous and previous.get("status") == Status.FINISHED:
            return previous
        # cuDNN's autotuner and the TF32 choice for this run; the process's own are put back
        with applied(backend_settings(device, config.tf32)):
            return _train(run, data, device, callbacks, stop, clock, memory, signals)


def _train(
    run: RunDir,
    data: ImageData,
    device: torch.device,
    callbacks: Sequence[Callback],
    stop: threading.Event,
    clock: Clock,
    memory: MemoryEstimate | None = None,
    signals: Sequence[Any] = (),
) -> dict[str, Any]:
    """The body of run_experiment, inside the run folder's lock; `signals`: the stop signals
    received so far (filled in by stop_on_signals)."""
    config = run.config
    model = build_model(config, data.num_classes).to(device)
    # pipeline: the same Trainer, whose modules train in worker processes (pipeline.py);
    # under torchrun, its ranks share the run (distributed.py)
    driver = Pipelined() if config.pipeline else InProcess()
    trainer = Trainer(
        config, run, model, data, device, watchers(callbacks), stop, clock, driver, sync_strategy()
    )
    trainer.memory = memory
    summary = Summary(
        run_dir=str(run.path),
        method=config.method,
        objective=config.objective,
        arch=config.arch,
        n_modules=config.n_modules,
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        precision=trainer.precision.name,
        precision_reason=trainer.precision.reason,
        tf32=tf32_in_effect(config.tf32, device_capability(device)),
        data=data.provenance,
        eval_protocol=config.eval_protocol,
        world_size=world_size(),
        pipeline=config.pipeline,
        replay_buffer=config.replay_buffer,
        test_split=data.provenance.get("test_split"),
        trunk_params=[sum(p.numel() for p in m.parameters()) for m in model.trunk],
        head_params=[sum(p.numel() for p in h.parameters()) for h in model.heads],
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
        memory_estimate_bytes=memory.peak if memory else None,
        memory_available_bytes=memory.available if memory else None,
    )
    try:
        run.write_summary(summary.to_dict())
        trainer.fit(summary)
        summary.update(trainer.final_summary())
        summary.status = Status.FINISHED
    except (StopRequested, KeyboardInterrupt):
        summary.status = Status.STOPPED
        summary.stopped_by = signals[0].name if signals else None
    except Exception as e:
        summary.status = Status.FAILED
        summary.error = f"{type(e).__name__}: {e}"
        summary.traceback = traceback.format_exc()
        raise
    finally:
        summary.wall_time_s = trainer.elapsed()
        summary.peak_memory_bytes = trainer.peak_memory()
        summary.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S")
        summary.eval_batch_size = trainer.eval_batch_size
        summary.time_split_s = clock.split()  # this session's, up to the summary's writing
        final = summary.to_dict()  # what is written, what watchers get, what is returned
        try:
            run.write_summary(final)
        except WriteError:
            if summary.status != Status.FAILED:  # else the error being raised says it already
                raise
        finally:
            trainer.close()
            trainer.emit(RUN_END, {"summary": final})
    return final


def memory_estimate(config: Config, data: ImageData, device: torch.device) -> MemoryEstimate | None:
    """The run's estimated peak memory on its device (on a torchrun rank's own GPU); None
    where the net cannot be traced on the meta device: an estimate never stops a run."""
    if device.type == "cuda" and under_torchrun():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    try:
        sizes = [data.provenance.get(f"n_{split}") or 0 for split in ("train", "test")]
        return estimate_memory(config, data.num_classes, device, *sizes)
    except Exception:
        return None
