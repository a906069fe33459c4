"""Evaluation while training and after it, each done once per change.

After an epoch only the modules that trained are evaluated: in a sequential phase from the
frozen prefix's test outputs, and never through a frozen module's head. Those outputs are the
previous phase's: its last evaluation keeps its module's outputs for the next phase, so each
module runs over the test set only in its own phase (the prefix is run again only when they
did not fit in memory, or in a resumed run).
Every module's test logits from its latest evaluation are kept, so the final summary (the
per-module table and the layer ensemble) is counted from them instead of evaluating again.
BatchNorm statistics are re-estimated (precise BN) only for the modules that trained, from the
cached prefix outputs when the training features are cached. Test batches have their own,
larger size (`eval_batch_size`); evaluation runs under inference_mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from workbench.data import Batches, statistics_batches, statistics_indices
from workbench.memory import free_memory_bytes, keep_budget_bytes
from workbench.metrics import (
    Evaluation,
    evaluate,
    evaluation_of_logits,
    per_module_probe_accuracy,
)
from workbench.training.methods import Phase

EVAL_BATCH_MAX = 1024  # on a GPU; more buys nothing


def auto_eval_batch_size(model: torch.nn.Module, sample: Tensor, batch_size: int) -> int:
    """The test batch size. On a GPU: up to EVAL_BATCH_MAX images whose largest module output,
    times 4 for the tensors alive around it, fits in an eighth of the free memory, never below
    the training batch size (which training has shown fits). On the CPU: the training batch
    size, since larger batches leave the caches: evaluation measured 1.4-2.5x slower at 1024
    than at 64-128 images (2-core AVX2 CPU, greedy CNN, ResNet-20 and a 10-block ResNet)."""
    if sample.device.type != "cuda":
        return batch_size
    biggest = largest_output_bytes(model, sample)
    return eval_batch_size_within(free_memory_bytes(sample.device), biggest, batch_size)


def eval_batch_size_within(free_bytes: int, output_bytes: int, batch_size: int) -> int:
    """Test images per batch whose largest output (`output_bytes` for one image), times 4 for
    the tensors alive around it, fits in an eighth of `free_bytes`: between the training batch
    size and EVAL_BATCH_MAX."""
    fits = (free_bytes // 8) // max(1, 4 * output_bytes)
    return int(max(batch_size, min(EVAL_BATCH_MAX, fits)))


def largest_output_bytes(model: torch.nn.Module, sample: Tensor) -> int:
    """fp32 bytes of one image's largest module output: the trunk run on one zero image in
    eval mode, as evaluation runs it. In training mode a BatchNorm on a 1x1 map would refuse a
    single value per channel, and every BN's running statistics would move towards a zero
    image's; the model's mode is put back after."""
    was_training = model.training
    model.eval()
    biggest = 0
    try:
        with torch.inference_mode():
            x = sample[:1]
            for module in model.trunk:
                x = module(x)
                biggest = max(biggest, x.numel() * 4)
    finally:
        model.train(was_training)
    return biggest


class EvaluationMixin:
    """The Trainer's evaluation methods (they read its model, data, phases and clock)."""

    test_logits: dict[int, Tensor]
    test_labels: Tensor | None
    kept_outputs: tuple[int, list[tuple[Tensor, Tensor]]] | None

    @contextlib.contextmanager
    def evaluation_layout(self) -> Iterator[None]:
        """The model in evaluation's memory format for the block (see
        evaluation_memory_format), in training's again after it."""
        if self.eval_memory_format == self.memory_format:
            yield
            return
        with torch.inference_mode(False):  # parameters made in inference mode cannot train
            self.model.to(memory_format=self.eval_memory_format)
        try:
            yield
        finally:
            with torch.inference_mode(False):
                self.model.to(memory_format=self.memory_format)

    @torch.inference_mode()  # evaluation only reads these
    def build_test_cache(self, phase: Phase) -> list[tuple[Tensor, Tensor]] | None:
        """The frozen prefix's outputs for every test image, or None if they would not fit in
        half the free memory (each evaluation then runs the prefix again)."""
        self.model.eval()
        cached, need = [], 0
        budget = keep_budget_bytes(free_memory_bytes(self.device))
        with self.evaluation_layout():
            for x, y in self.formatted(self.test_batches):
                features = self.prefix_features(phase, x)
                if not cached:  # size the whole set from the first batch
                    need = features[0].numel() * features.element_size() * len(self.test_batches.y)
                    if need > budget:
                        return None
                cached.append((features, y))
        return cached

    def keeps_outputs(self, phase: Phase, epoch: int) -> bool:
        """Whether this epoch's evaluation keeps its module's test outputs for the next phase:
        after a sequential phase's last epoch, when the next phase trains the module after it
        (whose frozen prefix then ends where this evaluation did)."""
        index = self.phases.index(phase)
        if epoch < phase.epochs - 1 or index + 1 == len(self.phases):
            return False
        (k, *others), after = phase.modules, self.phases[index + 1]
        return not others and after.frozen_prefix == k + 1

    def evaluate_phase(self, phase: Phase, keep_outputs: bool = False) -> Evaluation:
        """The phase's modules on the test set, after re-estimating their BN statistics;
        with keep_outputs, the last module's test outputs are kept (see keeps_outputs) when
        they fit in half the free memory."""
        with self.clock.part("precise_bn"):
            self.refresh_batchnorm(phase)
        upto, prefix = max(phase.modules) + 1, phase.frozen_prefix
        with self.clock.part("evaluate"), self.evaluation_layout():
            if self.test_features is not None:  # the frozen prefix's outputs, computed once
                batches, start = self.test_features, prefix
            else:
                batches, start = self.formatted(self.test_batches), 0
            budget = keep_budget_bytes(free_memory_bytes(self.device)) if keep_outputs else 0
            result = evaluate(
                self.model,
                batches,
                upto,
                self.amp,
                start=start,
                first=prefix,
                keep_logits=True,
                keep_outputs=budget,
            )
        if result.outputs is not None:
            self.kept_outputs = (upto, result.outputs)
        assert result.logits is not None
        for i, logits in enumerate(result.logits):
            self.test_logits[result.first + i] = logits
        self.test_labels = result.labels
        return result

    def final_evaluation(self) -> Evaluation:
        """Every module and the layer ensemble: counted from the kept logits when every module
        has them (the model has not changed since), else one full evaluation (a resumed run)."""
        n = len(self.model)
        with self.clock.part("evaluate"):
            if self.test_labels is not None and all(k in self.test_logits for k in range(n)):
                return evaluation_of_logits(
                    [self.test_logits[k] for k in range(n)], self.test_labels
                )
            with self.evaluation_layout():
                return evaluate(self.model, self.formatted(self.test_batches), autocast=self.amp)

    def formatted(self, batches: Any) -> Iterator[tuple[Tensor, Tensor]]:
        """The test batches' images in evaluation's memory format."""
        return ((x.contiguous(memory_format=self.eval_memory_format), y) for x, y in batches)

    @torch.no_grad()
    def refresh_batchnorm(self, phase: Phase) -> None:
        """Precise BN (as pycls): the trained modules' BN statistics, re-estimated exactly.

        Training updates BN's running statistics as an average with momentum 0.1 that starts
        from mean 0, variance 1: after a few dozen steps it is still far from the features'
        real statistics, and a module that trains well tests at chance. Here each BN of the
        phase's modules and heads is reset and fed a fixed tenth of the training set (no
        augmentation) with a cumulative average. Frozen modules keep theirs; training itself
        never reads running statistics, so only what evaluation sees changes. With the
        training features cached, the tenth's prefix outputs are read from the cache.
        """
        if not self.config.precise_bn:
            return
        learners = self.learners_of(phase)
        norms = [bn for learner in learners for bn in learner.norm_layers()]
        if not norms:
            return
        batches, start = self.statistics_inputs(phase)
        momenta = [bn.momentum for bn in norms]
        for bn in norms:
            bn.reset_running_stats()
        self.model.eval()
        for learner in learners:
            learner.train()  # BN uses (and records) batch statistics
        with self.autocast():
            for n, (x, _) in enumerate(batches, start=1):
                # a cumulative average over the batches: momentum 1/n at batch n is what
                # momentum None computes, 1 / float(num_batches_tracked), bit for bit; set here,
                # since reading that count from a GPU is a device sync per BN per batch
                for bn in norms:
                    bn.momentum = 1.0 / n
                x = x.contiguous(memory_format=self.memory_format)
                for k in range(start, max(phase.modules) + 1):
                    x = self.model.trunk[k](x)
                    if k in phase.modules:
                        self.model.heads[k](x)
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum

    def statistics_inputs(self, phase: Phase) -> tuple[Any, int]:
        """(batches, the module they enter): the cached prefix outputs of the statistics images
        when the phase's training features are cached, else the images themselves."""
        if self.cache is not None and phase.frozen_prefix > 0:
            keep = statistics_indices(self.data, self.config).to(self.cache.features.device)
            features = self.cache.features[keep]
            return [(x, None) for x in features.split(self.config.batch_size)], phase.frozen_prefix
        if self.stats_batches is None:
            self.stats_batches = statistics_batches(self.data, self.config, self.device)
        return self.stats_batches, 0

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

    # -- the end of the run ------------------------------------------------------------------
    def final_summary(self) -> dict[str, Any]:
        """Every module's test numbers, the layer ensemble and, if asked, the linear probes."""
        result = self.final_evaluation()
        out: dict[str, Any] = {
            "per_module_test_acc": result.per_module_acc,
            "per_module_test_top5": result.per_module_top5,
            "ensemble_test_acc": result.ensemble_acc,
            **self.protocol_numbers(result.per_module_acc[-1], result.per_module_top5[-1]),
        }
        if self.config.probe:
            with self.clock.part("evaluate"):
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
