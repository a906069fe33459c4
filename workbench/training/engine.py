"""The training loop shared by every method: local steps, evaluation, records, events, resume.

`run_experiment(config)` is the one entry point the CLI, the notebooks and papermill call.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from workbench.config import Config, ConfigError
from workbench.data import Batches, ImageData, load_data, make_batches, statistics_batches
from workbench.events import EPOCH_END, MODULE_DONE, RUN_END, RUN_START, Callback, StopRequested
from workbench.metrics import evaluate, per_module_probe_accuracy
from workbench.models import LayerwiseNet, build_model
from workbench.records import RunDir
from workbench.regularizers import kinetic_weight
from workbench.training.methods import Phase, plan

LAST = "last.pt"


def resolve_device(name: str) -> torch.device:
    """`auto` picks the GPU when there is one; asking for `cuda` without one is a config error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: got 'cuda' but no CUDA GPU is visible; allowed: auto, cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def check_speed_options(config: Config) -> None:
    """Refuse, before any data is loaded, speed options that would change what is computed."""
    if config.cache_features and config.resolved_augment != "none":
        raise ConfigError(
            f"cache_features: got true with augment={config.resolved_augment!r} "
            f"({config.dataset}'s {'default ' if config.augment == 'auto' else ''}augmentation); "
            "allowed: cache_features with augment none (a cache would freeze one augmented "
            "copy of each image), or cache_features false"
        )


def autocast_dtype(config: Config, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default (where bf16 is native), on the CPU only when asked."""
    if config.precision == "bf16":
        return torch.bfloat16
    if config.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def memory_format(config: Config, device: torch.device) -> torch.memory_format:
    """NHWC on CUDA, the layout cuDNN's tensor-core convolutions use; NCHW on the CPU."""
    if config.channels_last and device.type == "cuda":
        return torch.channels_last
    return torch.contiguous_format


def free_memory_bytes(device: torch.device) -> int:
    """Free device memory on CUDA; the RAM the kernel says is available on the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")  # free pages: a floor


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


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA's max allocated bytes on a GPU; the process's peak resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def learning_rate(config: Config, epoch: float, total_epochs: int | None = None) -> float:
    """The lr after `epoch` (fractional) of a module's `total_epochs` (default config.epochs)."""
    if config.lr_schedule == "step":
        return config.lr * config.lr_decay ** int(epoch // config.lr_step)
    if config.lr_schedule == "cosine":
        span = total_epochs or config.epochs
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(epoch / span, 1.0)))
    return config.lr


def restarts_momentum(config: Config, epoch: int) -> bool:
    """Whether a module's SGD starts afresh at the start of its `epoch` (0-indexed): at each
    step decay, as layerCNN's and DGL's ImageNet code build a new optimizer there."""
    return config.momentum_restart and epoch > 0 and epoch % config.lr_step == 0


class Trainer:
    """Holds one run's model, data, optimizers and records; the methods differ only in `plan`."""

    def __init__(
        self,
        config: Config,
        run: RunDir,
        model: LayerwiseNet,
        data: ImageData,
        device: torch.device,
        callbacks: Sequence[Callback] = (),
        stop: threading.Event | None = None,
    ):
        self.config, self.run, self.model, self.data, self.device = config, run, model, data, device
        self.callbacks = list(callbacks)
        self.stop = stop or threading.Event()
        self.train_batches, self.test_batches = make_batches(data, config, device)
        self.end_to_end = config.method == "end-to-end"
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.test_acc: dict[int, float] = {}  # latest test accuracy per module (1-indexed)
        self.test_top5: dict[int, float] = {}
        # TRGL's protocol: the best (accuracy, top-5, global epoch, module) seen so far
        self.best: dict[str, Any] | None = None
        self.global_epoch = 0
        self.elapsed_before = 0.0  # wall time of earlier sessions of a resumed run
        self.session_start: float | None = None
        self.phases = plan(config)
        # speed: none of these changes what is computed beyond rounding
        self.amp = autocast_dtype(config, device)
        self.memory_format = memory_format(config, device)
        model.to(memory_format=self.memory_format)
        # compiled callables share the modules' parameters, so state dicts are untouched
        wrap: Callable[[Any], Any] = torch.compile if config.compile else (lambda f: f)
        self.trained = [wrap(m.forward_with_kinetic) for m in model.trunk]
        self.frozen = [wrap(m) for m in model.trunk]
        self.heads = [wrap(h) for h in model.heads]
        self.cache: FeatureBatches | None = None  # the current phase's prefix outputs
        self.stats_batches: Any = None  # training images for BatchNorm re-estimates (lazy)

    # -- events ------------------------------------------------------------------------------
    def emit(self, event: str, info: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback(event, info)

    # -- optimizers --------------------------------------------------------------------------
    def optimizer(self, key: str) -> torch.optim.Optimizer:
        """Module k's own SGD (key str(k)), or one over the whole net (key 'all', end-to-end)."""
        if key not in self.optimizers:
            if key == "all":
                params = list(self.model.parameters())
            else:
                k = int(key)
                params = [*self.model.trunk[k].parameters(), *self.model.heads[k].parameters()]
            self.optimizers[key] = torch.optim.SGD(
                params,
                lr=self.config.lr,
                momentum=self.config.momentum,
                nesterov=self.config.nesterov,
                weight_decay=self.config.weight_decay,
            )
        return self.optimizers[key]

    def set_lr(self, keys: list[str], phase: Phase, epoch: float) -> float:
        lr = learning_rate(self.config, phase.first_epoch + epoch, phase.total_epochs)
        for key in keys:
            for group in self.optimizer(key).param_groups:
                group["lr"] = lr
        return lr

    # -- phases ------------------------------------------------------------------------------
    def begin_phase(self, phase: Phase) -> None:
        """With cache_features, run the phase's frozen prefix over the training set once."""
        if self.config.cache_features and phase.frozen_prefix > 0:  # not parallel, end-to-end
            self.cache = self.build_cache(phase)

    def end_phase(self, phase: Phase) -> None:
        """Drop the cache, and the gradients and optimizer state of modules that are done."""
        self.cache = None
        if phase.lap == self.phases[-1].lap:  # these modules never train again
            for k in phase.modules:
                self.optimizers.pop(str(k), None)
                for p in [*self.model.trunk[k].parameters(), *self.model.heads[k].parameters()]:
                    p.grad = None

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
        budget = free_memory_bytes(self.device) // 2  # the rest is for training itself
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
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, self.amp)

    def prefix_features(self, phase: Phase, x: Tensor) -> Tensor:
        """The frozen modules' output: eval mode (set by the caller) and no autograd graph."""
        with torch.no_grad(), self.autocast():
            for k in range(phase.frozen_prefix):
                x = self.frozen[k](x)
        return x

    def step(self, phase: Phase, x: Tensor, y: Tensor, stats: Tensor) -> None:
        """One batch of the phase's method: x is an image batch, or cached prefix outputs."""
        x = x.contiguous(memory_format=self.memory_format)
        if self.end_to_end:
            self.end_to_end_step(x, y, stats)
            return
        if self.cache is None:
            x = self.prefix_features(phase, x)
        self.local_step(phase, x, y, stats)

    def local_step(self, phase: Phase, x: Tensor, y: Tensor, stats: Tensor) -> None:
        """Each trained module steps on its own aux loss; it hands a detached output onwards.

        x is the input of the phase's first module (the frozen prefix's output).
        """
        c = self.config
        for i, k in enumerate(phase.modules):
            with self.autocast():  # the forward only; backward follows the forward's dtypes
                out, energy = self.trained[k](x)
                logits = self.heads[k](out)
                ce = F.cross_entropy(logits, y, label_smoothing=c.label_smoothing)
                loss = ce + kinetic_weight(c, k) * energy
            opt = self.optimizer(str(k))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            x = out.detach()  # no gradient crosses a module boundary
            stats[i] += torch.stack([ce.detach() * len(y), (logits.argmax(-1) == y).sum()])

    def end_to_end_step(self, x: Tensor, y: Tensor, stats: Tensor) -> None:
        """Backprop through the trunk from the last head; other heads learn on detached features."""
        c = self.config
        losses, energy = [], x.new_zeros((), dtype=torch.float32)
        last = len(self.model) - 1
        with self.autocast():
            for k in range(len(self.model)):
                x, e = self.trained[k](x)
                energy = energy + kinetic_weight(c, k) * e
                logits = self.heads[k](x if k == last else x.detach())
                ce = F.cross_entropy(logits, y, label_smoothing=c.label_smoothing)
                losses.append(ce)
                stats[k] += torch.stack([ce.detach() * len(y), (logits.argmax(-1) == y).sum()])
            total = torch.stack(losses).sum() + energy
        opt = self.optimizer("all")
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    # -- one epoch ---------------------------------------------------------------------------
    def train_pass(self, phase: Phase, epoch: int) -> tuple[list[list[float]], int, float, float]:
        """One epoch of training steps: ([loss sum, correct] per module, images, seconds, lr)."""
        model = self.model
        model.eval()  # frozen modules keep their BN statistics
        for k in phase.modules:
            model.trunk[k].train()
            model.heads[k].train()
        keys = ["all"] if self.end_to_end else [str(k) for k in phase.modules]
        batches = self.train_batches if self.cache is None else self.cache
        stats = torch.zeros(len(phase.modules), 2, device=self.device)  # loss sum, correct
        n_batches, seen, lr = len(batches), 0, 0.0
        if restarts_momentum(self.config, phase.first_epoch + epoch):
            for key in keys:
                self.optimizer(key).state.clear()  # SGD's state is its momentum buffers
        start = time.perf_counter()
        for i, (x, y) in enumerate(batches):
            if self.stop.is_set():
                raise StopRequested
            lr = self.set_lr(keys, phase, epoch + i / n_batches)
            self.step(phase, x, y, stats)
            seen += len(y)
        totals = stats.tolist()  # the epoch's one host sync (so `seconds` is honest on CUDA)
        return totals, seen, time.perf_counter() - start, lr

    def train_epoch(self, phase: Phase, epoch: int) -> list[dict[str, Any]]:
        """Train the phase's modules for one epoch; returns the epoch's metric rows."""
        totals, seen, seconds, lr = self.train_pass(phase, epoch)
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
        upto = max(phase.modules) + 1
        self.refresh_batchnorm(phase)
        result = evaluate(self.model, self.test_batches, upto=upto, autocast=self.amp)
        for k in phase.modules:
            self.test_acc[k + 1] = result.per_module_acc[k]
            self.test_top5[k + 1] = result.per_module_top5[k]
            rows.append(
                {
                    **base,
                    "module": k + 1,
                    "split": "test",
                    "loss": result.per_module_loss[k],
                    "acc": result.per_module_acc[k],
                    "top5": result.per_module_top5[k],
                }
            )
            if self.reports(phase, k):
                self.track_best(k, result.per_module_acc[k], result.per_module_top5[k])
        return rows

    @torch.no_grad()
    def refresh_batchnorm(self, phase: Phase) -> None:
        """Precise BN (as pycls): the trained modules' BN statistics, re-estimated exactly.

        Training updates BN's running statistics as an average with momentum 0.1 that starts
        from mean 0, variance 1: after a few dozen steps it is still far from the features'
        real statistics, and a module that trains well tests at chance. Here each BN of the
        phase's modules and heads is reset and fed a fixed tenth of the training set (no
        augmentation) with a cumulative average. Frozen modules keep theirs; training itself
        never reads running statistics, so only what evaluation sees changes.
        """
        if not self.config.precise_bn:
            return
        parts = [p for k in phase.modules for p in (self.model.trunk[k], self.model.heads[k])]
        norms = [m for p in parts for m in p.modules() if isinstance(m, _BatchNorm)]
        if not norms:
            return
        if self.stats_batches is None:
            self.stats_batches = statistics_batches(self.data, self.config, self.device)
        momenta = [bn.momentum for bn in norms]
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average over the batches
        self.model.eval()
        for part in parts:
            part.train()  # BN uses (and records) batch statistics
        with self.autocast():
            for x, _ in self.stats_batches:
                x = x.contiguous(memory_format=self.memory_format)
                for k in range(max(phase.modules) + 1):
                    x = self.model.trunk[k](x)
                    if k in phase.modules:
                        self.model.heads[k](x)
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum

    # -- TRGL's protocol ---------------------------------------------------------------------
    def reports(self, phase: Phase, k: int) -> bool:
        """Whether module k's test accuracy counts for TRGL's best-epoch number: every module
        of a parallel run (their code takes the best module each epoch), the last module of
        the last lap otherwise (their sequential code reports its last submodel)."""
        if len(phase.modules) > 1:
            return True
        return k == len(self.model) - 1 and phase.lap == self.phases[-1].lap

    def track_best(self, k: int, acc: float, top5: float) -> None:
        if self.best is None or acc > self.best["acc"]:
            self.best = {"acc": acc, "top5": top5, "epoch": self.global_epoch, "module": k + 1}

    # -- checkpoints -------------------------------------------------------------------------
    def save(self, phase_index: int, epochs_done: int, metrics_rows: int, elapsed: float) -> None:
        self.run.save_checkpoint(
            LAST,
            {
                "phase": phase_index,
                "epochs_done": epochs_done,
                "metrics_rows": metrics_rows,
                "global_epoch": self.global_epoch,
                "test_acc": self.test_acc,
                "test_top5": self.test_top5,
                "best": self.best,
                "elapsed": elapsed,
                "model": self.model.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "rng": torch.get_rng_state(),
            },
        )

    def restore(self) -> tuple[int, int]:
        """Load the last checkpoint, if any; returns (phase index, epochs done in it)."""
        state = self.run.load_checkpoint(LAST)
        if state is None:
            self.run.truncate_metrics(0)
            return 0, 0
        self.model.load_state_dict(state["model"])
        for key, opt_state in state["optimizers"].items():
            self.optimizer(key).load_state_dict(opt_state)
        self.global_epoch, self.test_acc = state["global_epoch"], dict(state["test_acc"])
        self.test_top5, self.best = dict(state.get("test_top5", {})), state.get("best")
        self.train_batches.epoch = self.global_epoch  # same data order as an unbroken run
        self.elapsed_before = state["elapsed"]
        torch.set_rng_state(state["rng"])
        self.run.truncate_metrics(state["metrics_rows"])
        phase, done = state["phase"], state["epochs_done"]
        if done == self.phases[phase].epochs:  # that phase was complete: start the next
            return phase + 1, 0
        return phase, done

    def save_module(self, k: int) -> None:
        self.run.save_checkpoint(
            f"module_{k + 1}.pt",
            {
                "trunk": self.model.trunk[k].state_dict(),
                "head": self.model.heads[k].state_dict(),
                "test_acc": self.test_acc.get(k + 1),
            },
        )

    # -- the whole run -----------------------------------------------------------------------
    def elapsed(self) -> float:
        """Training wall time so far, earlier sessions of a resumed run included."""
        if self.session_start is None:
            return self.elapsed_before
        return self.elapsed_before + time.perf_counter() - self.session_start

    def fit(self, summary: dict[str, Any]) -> None:
        """Run every phase from the resume point; updates `summary` as modules finish."""
        start_phase, start_epoch = self.restore()
        summary["resumed_from"] = (
            {"phase": start_phase, "epochs_done": start_epoch} if self.global_epoch else None
        )
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
                rows = self.train_epoch(phase, epoch)
                self.run.append_metrics(rows)
                elapsed = self.elapsed()
                self.save(index, epoch + 1, len(self.run.read_metrics()), elapsed)
                summary.update(self.progress_summary(elapsed))
                self.run.write_summary(summary)
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
            last_lap = phase.lap == self.phases[-1].lap
            for k in phase.modules:
                if last_lap:
                    self.save_module(k)
                    summary["modules_finished"] = max(summary.get("modules_finished", 0), k + 1)
                self.emit(
                    MODULE_DONE,
                    {"module": k + 1, "lap": phase.lap + 1, "test_acc": self.test_acc.get(k + 1)},
                )
            self.end_phase(phase)

    def progress_summary(self, elapsed: float) -> dict[str, Any]:
        trained = sorted(self.test_acc)
        last = len(self.model)
        out = {
            "per_module_test_acc": [self.test_acc[k] for k in trained],
            "per_module_test_top5": [self.test_top5.get(k) for k in trained],
            "final_test_acc": self.test_acc.get(last),
            "final_test_top5": self.test_top5.get(last),
            "wall_time_s": elapsed,
            "peak_memory_bytes": peak_memory_bytes(self.device),
        }
        return {**out, **self.protocol_numbers(out["final_test_acc"], out["final_test_top5"])}

    def protocol_numbers(self, last_acc: float | None, last_top5: float | None) -> dict[str, Any]:
        """final_test_acc / top5 as the config's evaluation protocol defines them."""
        if self.config.eval_protocol != "trgl-best" or self.best is None:
            return {"final_test_acc": last_acc, "final_test_top5": last_top5}
        return {
            "final_test_acc": self.best["acc"],
            "final_test_top5": self.best["top5"],
            "best_epoch": self.best["epoch"],
            "best_module": self.best["module"],
            "last_epoch_test_acc": last_acc,
        }

    def final_summary(self) -> dict[str, Any]:
        """Evaluate every module once more, the layer ensemble and, if asked, the linear probes."""
        result = evaluate(self.model, self.test_batches, autocast=self.amp)
        out: dict[str, Any] = {
            "per_module_test_acc": result.per_module_acc,
            "per_module_test_top5": result.per_module_top5,
            "ensemble_test_acc": result.ensemble_acc,
            **self.protocol_numbers(result.per_module_acc[-1], result.per_module_top5[-1]),
        }
        if self.config.probe:
            plain_train = Batches(
                self.data.train_x,
                self.data.train_y,
                batch_size=512,
                device=self.device,
                mean=self.data.mean,
                std=self.data.std,
            )
            out["per_module_probe_acc"] = per_module_probe_accuracy(
                self.model, plain_train, self.test_batches, self.data.num_classes, self.amp
            )
        return out


def run_experiment(
    config: Config,
    callbacks: Sequence[Callback] = (),
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Train `config` into its run folder and return the summary (also in summary.json).

    Everything that can be refused (device, data, run folder) is checked before training.
    A run folder holding an unfinished run of the same config resumes from its checkpoint; a
    finished one is returned as it is. Stopping (the flag, or Ctrl-C) leaves status 'stopped'.
    """
    device = resolve_device(config.device)
    check_speed_options(config)
    data = load_data(config)
    run = RunDir.open(config)
    previous = run.read_summary()
    if previous and previous.get("status") == "finished":
        return previous
    config = run.config
    model = build_model(config, data.num_classes).to(device)
    trainer = Trainer(config, run, model, data, device, callbacks, stop)
    summary: dict[str, Any] = {
        "status": "running",
        "run_dir": str(run.path),
        "method": config.method,
        "arch": config.arch,
        "n_modules": config.n_modules,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "data": data.provenance,
        "eval_protocol": config.eval_protocol,
        "test_split": data.provenance.get("test_split"),
        "per_module_test_acc": [],
        "per_module_test_top5": [],
        "final_test_acc": None,
        "final_test_top5": None,
        "ensemble_test_acc": None,
        "modules_finished": 0,
        "trunk_params": [sum(p.numel() for p in m.parameters()) for m in model.trunk],
        "head_params": [sum(p.numel() for p in h.parameters()) for h in model.heads],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    run.write_summary(summary)
    try:
        trainer.fit(summary)
        summary.update(trainer.final_summary())
        summary["status"] = "finished"
    except (StopRequested, KeyboardInterrupt):
        summary["status"] = "stopped"
    except Exception as e:
        summary["status"] = "failed"
        summary["error"] = f"{type(e).__name__}: {e}"
        summary["traceback"] = traceback.format_exc()
        raise
    finally:
        summary["wall_time_s"] = trainer.elapsed()
        summary["peak_memory_bytes"] = peak_memory_bytes(device)
        summary["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        run.write_summary(summary)
        trainer.emit(RUN_END, {"summary": summary})
    return summary
