"""Checkpoints and resume: last.pt (the resume point) and module_<k>.pt per finished module.

A finishing module's checkpoint is written before the resume point that skips past it, so no
kill loses one; a resume rewrites any that are missing, and an unreadable last.pt falls back to
the module checkpoints where they hold the whole state at the end of a phase. Everything stored
is tensors and plain data: checkpoints load with weights_only=True and never run code.

What a resume needs is one typed record, ResumePoint, and the learners' training state:
last.pt holds both, a finished module's checkpoint its ResumePoint, and under torchrun rank 0
sends both to the other ranks (distributed.py).
"""

from __future__ import annotations

import os
import sys
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from workbench.records import CheckpointError

LAST = "last.pt"


@dataclass
class ResumePoint:
    """Where a run stands besides its weights: what a resume needs to go on exactly. Stored as
    a dict of these names (last.pt's top level, a module checkpoint's "resume")."""

    phase: int  # index of the phase the run is in
    epochs_done: int  # of that phase
    metrics_rows: int  # metrics.jsonl's rows up to this point (later ones are dropped)
    global_epoch: int  # epochs trained so far, every module's counted (the data order's)
    test_acc: dict[int, float]  # each module's latest test accuracy (1-indexed)
    elapsed: float  # training seconds of the sessions so far
    rng: Tensor  # torch's CPU generator state
    test_top5: dict[int, float] = field(default_factory=dict)  # (not in the oldest runs)
    best: dict[str, Any] | None = None  # TRGL's protocol: the best epoch so far

    @classmethod
    def required(cls) -> set[str]:
        """The names every stored resume point holds (the others came later)."""
        return {f.name for f in fields(cls) if f.default is f.default_factory is MISSING}

    @classmethod
    def of(cls, state: Any) -> ResumePoint | None:
        """The resume point stored in `state`, or None if it holds none."""
        if not isinstance(state, dict) or not cls.required() <= set(state):
            return None
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})

    def stored(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class CheckpointMixin:
    """The Trainer's checkpoint methods (they read its model, learners, phases and run)."""

    def resume_point(
        self, phase_index: int, epochs_done: int, metrics_rows: int, elapsed: float
    ) -> ResumePoint:
        """Where the run stands, besides the weights."""
        return ResumePoint(
            phase=phase_index,
            epochs_done=epochs_done,
            metrics_rows=metrics_rows,
            global_epoch=self.global_epoch,
            test_acc=self.test_acc,
            test_top5=self.test_top5,
            best=self.best,
            elapsed=elapsed,
            rng=torch.get_rng_state(),
        )

    def training_state(self) -> dict[str, Any]:
        """The weights and the learners' SGD (and fp16 loss scaler) states, by learner key."""
        learners = self.learners.items()
        return {
            "model": self.model.state_dict(),
            "optimizers": {k: learner.optimizer.state_dict() for k, learner in learners},
            "scalers": {
                k: learner.scaler.state_dict() for k, learner in learners if learner.scaler
            },
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        for key, opt_state in state["optimizers"].items():
            self.learner(key).optimizer.load_state_dict(opt_state)
        # fp16's loss scalers (none before fp16 runs existed; a run resumed in another
        # precision ignores them; {} is a scaler that never scaled a loss)
        for key, scaler_state in state.get("scalers", {}).items():
            scaler = self.learner(key).scaler
            if scaler is not None and scaler_state:
                scaler.load_state_dict(scaler_state)

    def take_resume_point(self, point: ResumePoint) -> None:
        """Stand where `point` says (the weights are loaded apart)."""
        self.global_epoch, self.test_acc = point.global_epoch, dict(point.test_acc)
        self.test_top5, self.best = dict(point.test_top5), point.best
        self.train_batches.epoch = self.global_epoch  # same data order as an unbroken run
        self.elapsed_before = point.elapsed
        torch.set_rng_state(point.rng)

    def save(self, phase_index: int, epochs_done: int, metrics_rows: int, elapsed: float) -> None:
        point = self.resume_point(phase_index, epochs_done, metrics_rows, elapsed)
        self.run.save_checkpoint(LAST, {**point.stored(), **self.training_state()})

    def save_module(self, k: int, resume: ResumePoint | None) -> None:
        """module_<k>.pt: the module and its head, and (at the end of its last phase) where the
        run stood then, so the module checkpoints can stand in for an unreadable last.pt."""
        state = {
            "trunk": self.model.trunk[k].state_dict(),
            "head": self.model.heads[k].state_dict(),
            "test_acc": self.test_acc.get(k + 1),
            "test_top5": self.test_top5.get(k + 1),
        }
        if resume is not None:
            state["resume"] = resume.stored()
        self.run.save_checkpoint(f"module_{k + 1}.pt", state)

    def restore(self) -> tuple[int, int]:
        """Load the last checkpoint, if any; returns (phase index, epochs done in it)."""
        try:
            state = self.run.load_checkpoint(LAST)
            point = ResumePoint.of(state)
            if state is not None and (point is None or not {"model", "optimizers"} <= set(state)):
                raise CheckpointError(self.run.checkpoints / LAST, "not a workbench checkpoint")
        except CheckpointError as e:
            return self.recover(e)
        if state is None or point is None:
            self.run.truncate_metrics(0)
            return 0, 0
        self.load_training_state(state)
        phase, done = self.restore_point(point)
        start = (phase + 1, 0) if done == self.phases[phase].epochs else (phase, done)
        self.rewrite_missing_modules(*start)
        return start

    def restore_point(self, point: ResumePoint) -> tuple[int, int]:
        """Take up a stored resume point; returns its (phase index, epochs done)."""
        self.take_resume_point(point)
        self.run.truncate_metrics(point.metrics_rows)
        return point.phase, point.epochs_done

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
            resume = ResumePoint.of(state.get("resume")) if state else None
            if resume is None:
                continue
            trained = {k for p in self.phases[: resume.phase + 1] for k in p.modules}
            if not trained <= set(range(last + 1)):  # a module trained then has no checkpoint
                continue
            saved = {last: {**state, "resume": resume}}
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
