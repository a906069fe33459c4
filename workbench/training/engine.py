"""The training loop shared by every method: local steps, evaluation, records and events.

The Trainer runs a method's phases (training/methods.py) over one model; run.py's
`run_experiment` builds it. A non-finite loss (or parameter) stops the run as failed, naming
module, epoch and step. Checkpoints and resume are checkpoints.py's; device, precision and
memory are device.py's.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from workbench.config import Config
from workbench.data import Batches, ImageData, make_batches
from workbench.data.batches import normalization_tensors
from workbench.events import (
    EPOCH_END,
    MODULE_DONE,
    RUN_START,
    Callback,
    StopRequested,
)
from workbench.local.learner import LocalLearner, training_body
from workbench.local.objective import LocalInputs
from workbench.local.objectives import objective_class
from workbench.local.optim import autocast
from workbench.memory import free_memory_bytes, keep_budget_bytes, peak_memory_bytes
from workbench.models import LayerwiseNet
from workbench.records import RunDir, RunFailed
from workbench.summary import Summary
from workbench.training.backends import Alone, InProcess, PassTotals
from workbench.training.checkpoints import CheckpointMixin
from workbench.training.device import (
    compiler,
    evaluation_memory_format,
    memory_format,
    run_precision,
    synchronizer,
)
from workbench.training.estimate import CostModel, EstimateMixin, SpeedProbe
from workbench.training.evaluation import EvaluationMixin, auto_eval_batch_size
from workbench.training.memory_estimate import (
    MemoryEstimate,
    OutOfMemory,
    is_out_of_memory,
    out_of_memory_message,
)
from workbench.training.methods import Phase, learning_rate, plan, restarts_momentum
from workbench.training.timing import Clock

# fp16: a loss scale this small means 24 more skipped steps (inf or NaN gradients) than the
# scaler grew back from its start at 2^16: gradients that overflow fp16 even scaled far down
MIN_LOSS_SCALE = 2.0**-8


class Diverged(RunFailed):
    """A loss or a parameter became NaN or infinite; the run stops as failed."""

    def __init__(self, message: str, rows: list[dict[str, Any]]):
        super().__init__(message)
        self.rows = rows  # the diverged epoch's training rows, kept in metrics.jsonl


class FeatureBatches:
    """A frozen prefix's outputs for the whole training set, served in the training order.

    Each iteration advances the training batches' epoch counter and draws the same permutation
    they would have drawn, so a cached run sees its examples in the same order as an uncached
    one (and a resumed run continues it).
    """

    def __init__(self, features: Tensor, labels: Tensor, order_of: Batches):
        self.features, self.labels, self.source = features, labels, order_of

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order, _ = self.source.next_epoch()  # the training batches' own draw for this epoch
        if order is None:
            order = torch.arange(len(self.labels))
        chunks = order.to(self.features.device).split(self.source.batch_size)
        return ((self.features[idx], self.labels[idx]) for idx in chunks)


class Trainer(EvaluationMixin, CheckpointMixin, EstimateMixin):
    """Holds one run's model, data, learners and records; the methods differ only in `plan`,
    the execution backends only in the strategies it is given (backends.py): `driver` runs the
    training passes, `sync` is what the run's processes share."""

    def __init__(
        self,
        config: Config,
        run: RunDir,
        model: LayerwiseNet,
        data: ImageData,
        device: torch.device,
        callbacks: Sequence[Callback] = (),
        stop: threading.Event | None = None,
        clock: Clock | None = None,
        driver: InProcess | None = None,
        sync: Alone | None = None,
    ):
        self.config, self.run, self.model, self.data, self.device = config, run, model, data, device
        self.driver, self.sync = driver or InProcess(), sync or Alone()
        self.callbacks = list(callbacks)
        self.stop = stop or threading.Event()
        self.memory: MemoryEstimate | None = None  # the run's estimate (run.py sets it)
        self.clock = clock or Clock()
        # the device alone, not this Trainer: a Trainer -> clock -> Trainer cycle would keep a
        # finished run's model and data on the GPU until the cyclic garbage collector ran
        self.clock.sync = synchronizer(device)
        self.eval_batch_size = config.eval_batch_size or auto_eval_batch_size(
            model, self.sample_image(), config.batch_size
        )
        self.train_batches, self.test_batches = make_batches(
            data, config, device, self.eval_batch_size
        )
        self.sync.attach(self)  # before the modules are wrapped: its stop flag, its checks
        # the learners that have trained, by key (str(k), or 'all' end-to-end): each module's
        # SGD state lives from its first step to the end of its last phase
        self.learners: dict[str, LocalLearner] = {}
        self.needs_image = "image" in objective_class(config.objective).needs
        # (scale, shift) of the data's normalization, to give an objective the images as they
        # were before it (pixel / 255)
        self.normalization = normalization_tensors(data.mean, data.std, device)
        self.lr = config.lr  # the current step's learning rate
        self.test_acc: dict[int, float] = {}  # latest test accuracy per module (1-indexed)
        self.test_top5: dict[int, float] = {}
        # TRGL's protocol: the best (accuracy, top-5, global epoch, module) seen so far
        self.best: dict[str, Any] | None = None
        self.global_epoch = 0
        self.elapsed_before = 0.0  # wall time of earlier sessions of a resumed run
        self.session_start: float | None = None
        self.phases = plan(config)
        # speed: none of these changes what is computed beyond rounding
        self.precision = run_precision(config, device)
        self.amp = self.precision.dtype
        self.memory_format = memory_format(config, device)
        self.eval_memory_format = evaluation_memory_format(config, device)
        model.to(memory_format=self.memory_format)
        # what runs each module and head: compiled, and as the sync strategy trains them (DDP
        # across torchrun's ranks), all sharing the modules' parameters
        wrap, parallel = compiler(config), self.sync.parallel
        self.trained = [wrap(parallel(training_body(config, m))) for m in model.trunk]
        self.frozen = [wrap(m) for m in model.trunk]
        self.heads = [wrap(parallel(h)) for h in model.heads]
        self.cache: FeatureBatches | None = None  # the current phase's prefix outputs
        self.stats_batches: Any = None  # training images for BatchNorm re-estimates (lazy)
        # per step and trained module, whether its loss was finite: written on the device by
        # each step, read by the host only when an epoch's losses are not all finite
        self.finite: Tensor | None = None
        self.skipped: Tensor | None = None  # fp16: per trained module, steps the scaler skipped
        self.step_index = 0
        self.estimated = not self.callbacks  # the time estimate is for watchers: one per run
        self.cost: CostModel | None = None  # FLOPs per image, for the estimates (lazy)
        self.recovered: str | None = None  # how an unreadable last.pt was replaced, if it was
        # the frozen prefix's outputs on the test set, for the current phase (or None)
        self.test_features: list[tuple[Tensor, Tensor]] | None = None
        # (k, module k's test outputs) from the last evaluation of a sequential phase: the
        # next phase's frozen prefix outputs, so it need not run the prefix again for them
        self.kept_outputs: tuple[int, list[tuple[Tensor, Tensor]]] | None = None
        # each module's test logits from its latest evaluation (host), for the final summary
        self.test_logits: dict[int, Tensor] = {}
        self.test_labels: Tensor | None = None

    def sample_image(self) -> Tensor:
        """An input of the trunk's shape on the device (it sizes the test batches)."""
        c, s = self.config.dataset_info.channels, self.config.input_size
        return torch.zeros(1, c, s, s, device=self.device).contiguous(
            memory_format=memory_format(self.config, self.device)
        )

    # -- events ------------------------------------------------------------------------------
    def emit(self, event: str, info: dict[str, Any]) -> None:
        with self.clock.part("callbacks"):
            for callback in self.callbacks:
                callback(event, info)

    # -- learners ---------------------------------------------------------------------------
    def learner(self, key: str) -> LocalLearner:
        """Module k's learner (key str(k)), or the whole net's (key 'all', end-to-end)."""
        if key not in self.learners:
            ks = range(len(self.model)) if key == "all" else [int(key)]
            self.learners[key] = LocalLearner(
                self.config,
                ks,
                [self.model.trunk[k] for k in ks],
                [self.model.heads[k] for k in ks],
                self.precision,
                self.device,
                self.memory_format,
                bodies=[self.trained[k] for k in ks],
                classifiers=[self.heads[k] for k in ks],
                joint=key == "all",
            )
        return self.learners[key]

    def learners_of(self, phase: Phase) -> list[LocalLearner]:
        """The learners a phase trains: one over its modules when gradients cross their
        boundaries (end-to-end), else one per module."""
        if phase.joint:
            return [self.learner("all")]
        return [self.learner(str(k)) for k in phase.modules]

    # -- phases ------------------------------------------------------------------------------
    def begin_phase(self, phase: Phase) -> None:
        """The phase's frozen prefix outputs on the test set (they do not change while the
        phase trains): kept from the previous phase's last evaluation, else run once; with
        cache_features, over the training set too."""
        kept, self.kept_outputs = self.kept_outputs, None
        if phase.frozen_prefix > 0:  # sequential, multilap
            with self.clock.part("evaluate"):
                if kept is not None and kept[0] == phase.frozen_prefix:
                    self.test_features = kept[1]
                else:
                    self.test_features = self.build_test_cache(phase)
            if self.config.cache_features:
                with self.clock.part("train"):
                    self.cache = self.build_cache(phase)

    def end_phase(self, phase: Phase) -> None:
        """Drop the caches, and the gradients and optimizer state of modules that are done."""
        self.cache = None
        self.test_features = None
        if phase.lap == self.phases[-1].lap:  # these modules never train again
            for learner in self.learners_of(phase):
                learner.release()
                self.learners.pop(learner.key)

    @torch.no_grad()  # not inference_mode: module k saves these inputs for its backward
    def build_cache(self, phase: Phase) -> FeatureBatches | None:
        """The prefix's outputs for every training image, or None (and a warning) if too big."""
        plain = Batches(
            self.data.train_x,
            self.data.train_y,
            batch_size=self.config.batch_size,  # the training batches' shapes: same kernels
            device=self.device,
            mean=self.data.mean,
            std=self.data.std,
        )
        self.model.eval()
        parts = iter(plain)
        x, _ = next(parts)
        first = self.prefix_features(phase, x.contiguous(memory_format=self.memory_format))
        need = len(plain.y) * first[0].numel() * first.element_size()
        budget = keep_budget_bytes(free_memory_bytes(self.device))
        if need > budget:
            warnings.warn(
                f"cache_features: module {phase.modules[0] + 1}'s inputs for {len(plain.y)} "
                f"images need {need / 2**30:.2f} GiB, over half the free {self.device.type} "
                f"memory ({budget / 2**30:.2f} GiB); training it without the cache",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        features = [first]
        for x, _ in parts:
            features.append(
                self.prefix_features(phase, x.contiguous(memory_format=self.memory_format))
            )
        labels = self.train_batches.y.to(self.device)
        return FeatureBatches(torch.cat(features), labels, self.train_batches)

    # -- one step ----------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the run's low precision, or nothing at all in fp32."""
        return autocast(self.device, self.amp)

    def raw_images(self, x: Tensor) -> Tensor:
        """A batch of normalized images as they were before normalization, in [0, 1]."""
        scale, shift = self.normalization
        return (x - shift) / (scale * 255)

    def prefix_features(self, phase: Phase, x: Tensor) -> Tensor:
        """The frozen modules' output: eval mode (set by the caller) and no autograd graph."""
        with torch.no_grad(), self.autocast():
            for k in range(phase.frozen_prefix):
                x = self.frozen[k](x)
        return x

    def step(self, phase: Phase, x: Tensor, y: Tensor, stats: Tensor) -> None:
        """One batch of the phase: x is an image batch, or cached prefix outputs. Each learner
        steps on its own loss and hands a detached output onwards; the phase's first trains
        on the frozen prefix's output."""
        x = x.contiguous(memory_format=self.memory_format)
        image = self.raw_images(x) if self.needs_image else None  # (the cache holds none)
        if self.cache is None:
            x = self.prefix_features(phase, x)
        i = 0
        for learner in self.learners_of(phase):
            result = learner.step(LocalInputs(x, y, image), self.lr)
            for j, (reported, correct, loss) in enumerate(
                zip(result.reported, result.correct, result.loss)
            ):
                stats[i + j] += torch.stack([reported.detach() * len(y), correct])
                self.note_finite(i + j, loss)
            n = len(learner.modules)
            if result.skipped is not None and self.skipped is not None:
                self.skipped[i : i + n] += result.skipped  # counted on the device
            x = result.output  # detached: no gradient crosses a learner's boundary
            i += n

    def note_finite(self, i: int, loss: Tensor) -> None:
        """Record on the device whether the phase's i-th module had a finite loss this step."""
        if self.finite is not None:
            self.finite[i, self.step_index].logical_and_(torch.isfinite(loss.detach()))

    # -- one epoch ---------------------------------------------------------------------------
    def train_pass(self, phase: Phase, epoch: int) -> PassTotals:
        """One epoch of training, by the run's driver, totalled over the run's processes:
        ([loss sum, correct] per module, images, seconds, lr)."""
        totals, seen, seconds, lr = self.driver.train_pass(self, phase, epoch)
        totals, seen = self.sync.combine(totals, seen)
        return totals, seen, seconds, lr

    def local_pass(self, phase: Phase, epoch: int) -> PassTotals:
        """One epoch of training steps in this process."""
        self.model.eval()  # frozen modules keep their BN statistics
        learners = self.learners_of(phase)
        for learner in learners:
            learner.train()
        batches = self.train_batches if self.cache is None else self.cache
        stats = torch.zeros(len(phase.modules), 2, device=self.device)  # loss sum, correct
        n_batches, seen, lr = len(batches), 0, 0.0
        self.finite = torch.ones(
            len(phase.modules), n_batches, dtype=torch.bool, device=self.device
        )
        scaled = self.precision.scaled
        self.skipped = torch.zeros(len(phase.modules), device=self.device) if scaled else None
        probe = None if self.estimated else SpeedProbe(self.synchronize)
        progress = self.progress_reporter(phase, epoch, n_batches) if self.callbacks else None
        if restarts_momentum(self.config, phase.first_epoch + epoch):
            for learner in learners:
                learner.restart_momentum()
        start = time.perf_counter()
        for i, (x, y) in enumerate(self.sync.slices(batches, self.timed_batches(batches))):
            if self.stop.is_set():
                raise StopRequested
            lr = self.lr = learning_rate(
                self.config, phase.first_epoch + epoch + i / n_batches, phase.total_epochs
            )
            self.step_index = i
            self.step(phase, x, y, stats)
            seen += len(y)
            if progress:
                progress.after_step(i, seen)
            speed = probe.after_step(len(y)) if probe else None
            if speed is not None:
                self.report_estimate(phase, epoch, speed)
                probe = None
        totals = stats.tolist()  # the epoch's one host sync (so `seconds` is honest on CUDA)
        seconds = time.perf_counter() - start
        if probe:  # the pass ended before the probe had its steps
            self.report_estimate(phase, epoch, probe.at_pass_end(seen, seconds))
        return totals, seen, seconds, lr

    def timed_batches(self, batches: Any) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches, the wait for each charged to the clock's `data` (host time: on a GPU,
        what the loop waits for a DataLoader or an augmentation launch)."""
        iterator = iter(batches)
        while True:
            t = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            self.clock.add("data", time.perf_counter() - t)
            yield item

    def synchronize(self) -> None:
        """Wait for the device's queued work (the clock's sync: one function for both)."""
        self.clock.sync()

    def check_finite(self, phase: Phase, epoch: int, totals: list[list[float]]) -> str | None:
        """None when the epoch's losses and the trained parameters are finite; else what broke:
        the module, its epoch and the first step whose loss was not finite."""
        where = f"epoch {phase.first_epoch + epoch + 1}"
        steps = self.finite
        if steps is not None and not bool(steps.all()):  # host reads: once per epoch
            step, i = (int(v) for v in (~steps).t().nonzero()[0])  # the earliest step first
            module = phase.modules[i] + 1
            return (
                f"module {module}'s loss is NaN or infinite at {where}, "
                f"step {step + 1} of {steps.shape[1]}"
            )
        for k, (loss, _) in zip(phase.modules, totals):
            if not math.isfinite(loss):
                return f"module {k + 1}'s loss is NaN or infinite during {where}"
        for learner in self.learners_of(phase):  # fp16: a host read per learner and epoch
            scale = learner.scaler.get_scale() if learner.scaler is not None else math.inf
            if scale < MIN_LOSS_SCALE:
                return (
                    f"{learner.name}'s fp16 gradients stayed infinite (loss scale {scale:.2g}), "
                    f"{where}"
                )
        finite = torch.stack(
            [torch.stack([p.isfinite().all() for p in self.module_parameters(k)]).all()
             for k in phase.modules]
        ).tolist()  # fmt: skip
        for k, ok in zip(phase.modules, finite):
            if not ok:
                return f"module {k + 1}'s parameters became NaN or infinite during {where}"
        return None

    def module_parameters(self, k: int) -> list[Tensor]:
        return [*self.model.trunk[k].parameters(), *self.model.heads[k].parameters()]

    def train_epoch(self, phase: Phase, epoch: int) -> list[dict[str, Any]]:
        """Train the phase's modules for one epoch; returns the epoch's metric rows."""
        with self.clock.part("train"):
            totals, seen, seconds, lr = self.train_pass(phase, epoch)
            broken = self.check_finite(phase, epoch, totals)
        self.global_epoch += 1
        base = {
            "global_epoch": self.global_epoch,
            "lap": phase.lap + 1,
            "epoch": phase.first_epoch + epoch + 1,
            "lr": lr,
        }
        rows = [
            {
                **base,
                "module": k + 1,
                "split": "train",
                "loss": loss / seen,
                "acc": hits / seen,
                "images_per_s": seen / seconds,
                "seconds": seconds,
            }
            for k, (loss, hits) in zip(phase.modules, totals)
        ]
        if self.skipped is not None:  # fp16: steps skipped for inf/NaN gradients, not failures
            skipped = [int(v) for v in self.skipped.tolist()]  # a joint learner's: all alike
            for i, row in enumerate(rows):
                row["skipped_steps"] = skipped[i]
        if broken:
            raise Diverged(
                f"training diverged: {broken} (lr {self.config.lr:g}); the run stopped as failed "
                "and keeps the records of the epochs before; try a smaller lr (in a new --out)",
                rows,
            )
        result = self.evaluate_phase(phase, keep_outputs=self.keeps_outputs(phase, epoch))
        for k in phase.modules:
            i = k - result.first
            self.test_acc[k + 1] = result.per_module_acc[i]
            self.test_top5[k + 1] = result.per_module_top5[i]
            rows.append(
                {
                    **base,
                    "module": k + 1,
                    "split": "test",
                    "loss": result.per_module_loss[i],
                    "acc": result.per_module_acc[i],
                    "top5": result.per_module_top5[i],
                }
            )
            if self.reports(phase, k):
                self.track_best(k, result.per_module_acc[i], result.per_module_top5[i])
        self.sync.annotate(rows)
        return rows

    # -- the whole run -----------------------------------------------------------------------
    def elapsed(self) -> float:
        """Training wall time so far, earlier sessions of a resumed run included."""
        if self.session_start is None:
            return self.elapsed_before
        return self.elapsed_before + time.perf_counter() - self.session_start

    def fit(self, summary: Summary) -> None:
        """Run every phase from the resume point; updates `summary` as modules finish."""
        with self.driver.session(self, summary):  # the pipeline's workers, say
            start_phase, start_epoch = self.sync.restore(self)
            summary.resumed_from = (
                {"phase": start_phase, "epochs_done": start_epoch} if self.global_epoch else None
            )
            if self.recovered:
                summary.recovered = self.recovered
            last_lap = self.phases[-1].lap
            finished = [
                k + 1 for p in self.phases[:start_phase] if p.lap == last_lap for k in p.modules
            ]
            summary.modules_finished = max(finished, default=0)
            self.session_start = time.perf_counter()
            self.emit(
                RUN_START,
                {
                    "config": self.config.to_dict(),
                    "device": str(self.device),
                    "run_dir": str(self.run.path),
                    "n_modules": len(self.model),
                    "method": self.config.method,
                    "total_epochs": sum(p.epochs for p in self.phases),
                    "epochs_done": self.global_epoch,
                },
            )
            for index, phase in enumerate(self.phases):
                if index < start_phase:
                    continue
                self.begin_phase(phase)
                for epoch in range(start_epoch if index == start_phase else 0, phase.epochs):
                    try:
                        rows = self.train_epoch(phase, epoch)
                    except Diverged as e:
                        self.run.append_metrics(e.rows)
                        raise
                    except Exception as e:  # an allocation that failed: one line, as failed
                        if not is_out_of_memory(e):
                            raise
                        where = (phase.modules, phase.first_epoch + epoch + 1, self.device)
                        raise OutOfMemory(out_of_memory_message(e, *where, self.memory)) from e
                    with self.clock.part("checkpoints"):
                        self.record_epoch(summary, index, phase, epoch, rows)
                    self.emit(
                        EPOCH_END,
                        {
                            "modules": [k + 1 for k in phase.modules],
                            "lap": phase.lap + 1,
                            "epoch": phase.first_epoch + epoch + 1,
                            "global_epoch": self.global_epoch,
                            "rows": rows,
                            "test_acc": dict(self.test_acc),
                            "images_per_s": rows[0]["images_per_s"],
                            "device": str(self.device),
                        },
                    )
                for k in phase.modules:
                    self.emit(
                        MODULE_DONE,
                        {
                            "module": k + 1,
                            "lap": phase.lap + 1,
                            "test_acc": self.test_acc.get(k + 1),
                        },
                    )
                self.end_phase(phase)

    def record_epoch(
        self, summary: Summary, index: int, phase: Phase, epoch: int, rows: list
    ) -> None:
        """The epoch's metrics rows, checkpoints and summary, written atomically."""
        self.run.append_metrics(rows)
        elapsed = self.elapsed()
        n_rows = len(self.run.read_metrics())
        if phase.lap == self.phases[-1].lap and epoch + 1 == phase.epochs:
            # the modules' checkpoints first: last.pt then skips past them on resume
            resume = self.resume_point(index, phase.epochs, n_rows, elapsed)
            for k in phase.modules:
                self.save_module(k, resume)
            summary.modules_finished = max(k + 1 for k in phase.modules)
        self.save(index, epoch + 1, n_rows, elapsed)
        summary.update(self.progress_summary(elapsed))
        self.run.write_summary(summary.to_dict())

    def close(self) -> None:
        """Let go of what the run's batches hold open (a streamed dataset's loader workers)."""
        for batches in (self.train_batches, self.test_batches, self.stats_batches):
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    def peak_memory(self) -> int:
        """The run's peak memory so far on its device (bytes): this process's, and what the
        driver's other processes add."""
        return self.driver.peak_memory(self, peak_memory_bytes(self.device))

    def progress_summary(self, elapsed: float) -> dict[str, Any]:
        trained = sorted(self.test_acc)
        last = len(self.model)
        out = {
            "per_module_test_acc": [self.test_acc[k] for k in trained],
            "per_module_test_top5": [self.test_top5.get(k) for k in trained],
            "final_test_acc": self.test_acc.get(last),
            "final_test_top5": self.test_top5.get(last),
            "wall_time_s": elapsed,
            "peak_memory_bytes": self.peak_memory(),
            "epochs_done": self.global_epoch,
        }
        return {**out, **self.protocol_numbers(out["final_test_acc"], out["final_test_top5"])}
