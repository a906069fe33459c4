"""Checkpoints and resume: last.pt (the resume point) and module_<k>.pt per finished module.

A finishing module's checkpoint is written before the resume point that skips past it, so no
kill loses one; a resume rewrites any that are missing, and an unreadable last.pt falls back to
the module checkpoints where they hold the whole state at the end of a phase. Everything stored
is tensors and plain data: checkpoints load with weights_only=True and never run code.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

from workbench.records import CheckpointError

LAST = "last.pt"
# what a resume point holds besides the weights (last.pt, and module checkpoints' "resume")
RESUME_KEYS = {"phase", "epochs_done", "metrics_rows", "global_epoch", "test_acc", "elapsed", "rng"}


class CheckpointMixin:
    """The Trainer's checkpoint methods (they read its model, optimizers, phases and run)."""

    def resume_point(
        self, phase_index: int, epochs_done: int, metrics_rows: int, elapsed: float
    ) -> dict[str, Any]:
        """Where the run stands, besides the weights: what a resume needs to go on exactly."""
        return {
            "phase": phase_index,
            "epochs_done": epochs_done,
            "metrics_rows": metrics_rows,
            "global_epoch": self.global_epoch,
            "test_acc": self.test_acc,
            "test_top5": self.test_top5,
            "best": self.best,
            "elapsed": elapsed,
            "rng": torch.get_rng_state(),
        }

    def save(self, phase_index: int, epochs_done: int, metrics_rows: int, elapsed: float) -> None:
        state = self.resume_point(phase_index, epochs_done, metrics_rows, elapsed)
        state["model"] = self.model.state_dict()
        learners = self.learners.items()
        state["optimizers"] = {k: learner.optimizer.state_dict() for k, learner in learners}
        state["scalers"] = {  # fp16's
            k: learner.scaler.state_dict() for k, learner in learners if learner.scaler is not None
        }
        self.run.save_checkpoint(LAST, state)

    def save_module(self, k: int, resume: dict[str, Any] | None) -> None:
        """module_<k>.pt: the module and its head, and (at the end of its last phase) where the
        run stood then, so the module checkpoints can stand in for an unreadable last.pt."""
        state = {
            "trunk": self.model.trunk[k].state_dict(),
            "head": self.model.heads[k].state_dict(),
            "test_acc": self.test_acc.get(k + 1),
            "test_top5": self.test_top5.get(k + 1),
        }
        if resume is not None:
            state["resume"] = resume
        self.run.save_checkpoint(f"module_{k + 1}.pt", state)

    def restore(self) -> tuple[int, int]:
        """Load the last checkpoint, if any; returns (phase index, epochs done in it)."""
        try:
            state = self.run.load_checkpoint(LAST)
            if state is not None and not RESUME_KEYS | {"model", "optimizers"} <= set(state):
                raise CheckpointError(self.run.checkpoints / LAST, "not a workbench checkpoint")
        except CheckpointError as e:
            return self.recover(e)
        if state is None:
            self.run.truncate_metrics(0)
            return 0, 0
        self.model.load_state_dict(state["model"])
        for key, opt_state in state["optimizers"].items():
            self.learner(key).optimizer.load_state_dict(opt_state)
        self.load_scalers(state.get("scalers", {}))  # none before fp16 runs existed
        phase, done = self.restore_point(state)
        start = (phase + 1, 0) if done == self.phases[phase].epochs else (phase, done)
        self.rewrite_missing_modules(*start)
        return start

    def load_scalers(self, states: dict[str, dict[str, Any]]) -> None:
        """The fp16 loss scalers' states (a run resumed in another precision ignores them)."""
        for key, scaler_state in states.items():
            scaler = self.learner(key).scaler
            if scaler is not None and scaler_state:  # {}: a scaler that never scaled a loss
                scaler.load_state_dict(scaler_state)

    def restore_point(self, state: dict[str, Any]) -> tuple[int, int]:
        """Take up a resume_point; returns its (phase index, epochs done)."""
        self.global_epoch, self.test_acc = state["global_epoch"], dict(state["test_acc"])
        self.test_top5, self.best = dict(state.get("test_top5", {})), state.get("best")
        self.train_batches.epoch = self.global_epoch  # same data order as an unbroken run
        self.elapsed_before = state["elapsed"]
        torch.set_rng_state(state["rng"])
        self.run.truncate_metrics(state["metrics_rows"])
        return state["phase"], state["epochs_done"]

    def rewrite_missing_modules(self, start_phase: int, start_epoch: int) -> None:
        """Write the checkpoint of any module finished before the resume point that lacks one
        (a run killed between the two writes by an older version, or a file deleted since)."""
        last_lap = self.phases[-1].lap
        for index, phase in enumerate(self.phases[:start_phase]):
            if phase.lap != last_lap:
                continue
            at_its_end = index == start_phase - 1 and start_epoch == 0  # the state is its end's
            for k in phase.modules:
                if not (self.run.checkpoints / f"module_{k + 1}.pt").exists():
                    rows = len(self.run.read_metrics())
                    resume = self.resume_point(index, phase.epochs, rows, self.elapsed_before)
                    self.save_module(k, resume if at_its_end else None)

    def recover(self, error: CheckpointError) -> tuple[int, int]:
        """After an unreadable last.pt, resume from the module checkpoints if they hold the
        whole state at the end of a phase: every module trained up to then finished for good
        (so no optimizer state is needed). Otherwise the error stands, in one line."""
        found = self.module_checkpoints_resume()
        if not found:
            raise error
        for k, state in found.items():
            self.model.trunk[k].load_state_dict(state["trunk"])
            self.model.heads[k].load_state_dict(state["head"])
        last = max(found)
        phase, _ = self.restore_point(found[last]["resume"])
        kept = error.path.with_name(error.path.name + ".unreadable")
        os.replace(error.path, kept)  # no later run trips on it; kept for whoever looks
        self.recovered = (
            f"{error.path} was unreadable ({error.reason}); resumed from the module checkpoints "
            f"after module {last + 1} (the file is kept as {kept.name})"
        )
        print(f"workbench: {self.recovered}", file=sys.stderr)
        return phase + 1, 0

    def module_checkpoints_resume(self) -> dict[int, dict[str, Any]] | None:
        """The newest intact module checkpoints a run can resume from: {module index: state}."""
        for last in reversed(range(len(self.model))):
            try:
                state = self.run.load_checkpoint(f"module_{last + 1}.pt")
            except CheckpointError:
                continue
            resume = state.get("resume") if state else None
            if not isinstance(resume, dict) or not RESUME_KEYS <= set(resume):
                continue
            trained = {k for p in self.phases[: resume["phase"] + 1] for k in p.modules}
            if not trained <= set(range(last + 1)):  # a module trained then has no checkpoint
                continue
            saved = {last: state}
            for k in range(last):
                try:
                    saved[k] = self.run.load_checkpoint(f"module_{k + 1}.pt")
                except CheckpointError:
                    break
                if not saved[k] or not {"trunk", "head"} <= set(saved[k]):
                    break
            else:
                return saved
        return None
