"""The doctor's CUDA checks: no host sync inside training steps, memory freed after a run, the
memory estimate against the measured peak, and the precision each run chose against the
capability table.

What needs a GPU is small (turning CUDA's sync debug mode on, reading its allocator); the rest
(watching the steps, the verdicts) runs on the CPU too, where the tests exercise it.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from workbench.config import Config
from workbench.doctor.checks import Check
from workbench.training.device import choose_precision, tf32_in_effect

SYNC_WORDS = "synchroniz"  # CUDA's sync debug warnings: "called a synchronizing CUDA operation"
WARM_UP_STEPS = 1  # the first step creates the optimizers and autotunes cuDNN: not a steady step


@contextmanager
def sync_debug(mode: str | None) -> Iterator[list[warnings.WarningMessage]]:
    """CUDA's sync debug mode (`warn` or `error`) for the block, put back after it; yields the
    warnings the block raised. mode None (the CPU) only collects warnings."""
    previous = torch.cuda.get_sync_debug_mode() if mode else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if mode:
            torch.cuda.set_sync_debug_mode(mode)
        try:
            yield caught
        finally:
            if mode:
                torch.cuda.set_sync_debug_mode(previous)


def sync_messages(caught: list[warnings.WarningMessage]) -> list[str]:
    """The host syncs among warnings, each as `message (file:line)`: where Python asked."""
    return [
        f"{str(w.message).strip().splitlines()[0]} ({w.filename}:{w.lineno})"
        for w in caught
        if SYNC_WORDS in str(w.message).lower()
    ]


def _watching_trainer_class() -> type:
    from workbench.training.engine import Trainer

    class SyncWatchingTrainer(Trainer):
        """A Trainer whose every step runs under the sync debug mode, the rest of the epoch
        (loading batches, the epoch's one read of its totals) outside it."""

        sync_mode: str | None = None
        step_syncs: list[list[str]]

        def step(self, phase: Any, x: Any, y: Any, stats: Any) -> None:
            with sync_debug(self.sync_mode) as caught:
                super().step(phase, x, y, stats)
            self.step_syncs.append(sync_messages(caught))

    return SyncWatchingTrainer


def watch_steps(config: Config, mode: str | None) -> list[list[str]]:
    """One epoch of the first phase of `config`'s method, each step under sync debug `mode`:
    the syncs each step made (an empty list per clean step)."""
    from workbench.data import load_data
    from workbench.models import build_model
    from workbench.records import RunDir
    from workbench.training.device import applied, backend_settings, resolve_device

    device = resolve_device(config.device)
    data = load_data(config)
    with tempfile.TemporaryDirectory(prefix="workbench-doctor-") as folder:
        run = RunDir(Path(folder) / "run", config)  # not opened: train_pass writes nothing
        model = build_model(config, data.num_classes).to(device)
        with applied(backend_settings(device, config.tf32)):  # a run's own CUDA settings
            trainer = _watching_trainer_class()(config, run, model, data, device)
            trainer.sync_mode = mode
            trainer.step_syncs = []
            try:
                trainer.train_pass(trainer.phases[0], 0)
            finally:
                trainer.close()
        return trainer.step_syncs


def sync_verdict(step_syncs: list[list[str]], mode: str | None) -> Check:
    """Pass when no step after the warm-up synced with the host (the warm-up's are listed)."""
    name = "no host sync inside training steps"
    steady = step_syncs[WARM_UP_STEPS:]
    if not steady:
        return Check(name, False, f"only {len(step_syncs)} steps ran; a steady step is needed")
    synced = [(i + WARM_UP_STEPS + 1, m) for i, ms in enumerate(steady) for m in ms]
    warm_up = sum(len(ms) for ms in step_syncs[:WARM_UP_STEPS])
    watched = f"{len(steady)} steps after {WARM_UP_STEPS} warm-up, sync debug mode {mode!r}"
    if synced:
        step, first = synced[0]
        return Check(
            name, False, f"{len(synced)} syncs in {watched}; first at step {step}: {first}"
        )
    return Check(name, True, f"none in {watched} (the warm-up step: {warm_up})")


def check_no_host_sync(config: Config) -> tuple[dict[str, Any], Check]:
    """A few steps of `config` (a small parallel run on cuda) under sync debug mode `warn`."""
    mode = "warn" if torch.cuda.is_available() and config.device != "cpu" else None
    step_syncs = watch_steps(config, mode)
    return {"steps": len(step_syncs), "syncs_per_step": step_syncs}, sync_verdict(step_syncs, mode)


def memory_verdict(before: int, after: int) -> Check:
    """Pass when the allocator holds no more after a run than before it (no gc.collect())."""
    name = "GPU memory freed after a run"
    if after > before:
        return Check(name, False, f"{after - before} bytes still allocated after the run returned")
    return Check(name, True, f"allocated {before} bytes before, {after} after (no gc.collect())")


def check_memory_freed(config: Config) -> tuple[dict[str, Any], Check]:
    """torch.cuda.memory_allocated() before and after run_experiment(config), no gc.collect()
    between: a run's model, data and optimizer state must go with its last reference."""
    from workbench.training import run_experiment

    before = torch.cuda.memory_allocated()
    run_experiment(config)  # its summary is plain data: nothing of the run on the GPU
    after = torch.cuda.memory_allocated()
    return {"allocated_before": before, "allocated_after": after}, memory_verdict(before, after)


ESTIMATE_WITHIN = (0.7, 1.3)  # the memory estimate against a run's measured peak


def estimate_verdict(estimated: int, measured: int, device: str) -> Check:
    """Pass when the run's memory estimate (made before training) is within ESTIMATE_WITHIN
    of the peak it then measured on `device`."""
    name = f"memory estimate near the measured peak on {device}"
    if not estimated or not measured:
        return Check(name, False, "the run recorded no estimate or no peak")
    ratio = estimated / measured
    low, high = ESTIMATE_WITHIN
    what = f"estimated {estimated / 2**20:.0f} MiB, measured {measured / 2**20:.0f} MiB"
    return Check(name, low <= ratio <= high, f"{what}: {ratio:.2f}x (allowed {low} to {high})")


def check_memory_estimate(config: Config) -> tuple[dict[str, Any], Check]:
    """A run's memory_estimate_bytes against its peak_memory_bytes (CUDA's max allocated, the
    CPU's peak resident set; both since the run started, data and weights included)."""
    from workbench.training import run_experiment

    summary = run_experiment(config)
    estimated, measured = summary.get("memory_estimate_bytes"), summary.get("peak_memory_bytes")
    details = {"estimated_bytes": estimated, "measured_bytes": measured}
    return details, estimate_verdict(estimated or 0, measured or 0, summary["device"])


def precision_verdict(
    device: str, capability: tuple[int, int] | None, runs: list[dict[str, Any]]
) -> Check:
    """Every run on `device` ran in the precision and TF32 the table gives for its capability
    (choose_precision with precision auto, tf32_in_effect with tf32 true, the defaults)."""
    expected = choose_precision("auto", capability).name
    tf32 = tf32_in_effect(Config().tf32, capability)
    name = f"precision on {device} matches the capability table"
    mine = [r for r in runs if r.get("precision") is not None]
    if not mine:
        return Check(name, False, f"no run on {device} recorded its precision")
    wrong = [r for r in mine if r["precision"] != expected or r["tf32"] != tf32]
    if wrong:
        r = wrong[0]
        return Check(
            name,
            False,
            f"run {r['name']} ran {r['precision']} (tf32 {r['tf32']}); the table says "
            f"{expected} (tf32 {tf32})",
        )
    return Check(name, True, f"{len(mine)} runs in {expected}, tf32 {tf32}, as the table says")
