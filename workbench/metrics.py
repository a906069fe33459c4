"""Per-module evaluation, Belilovsky's layer ensemble and Ma et al.'s linear-probe separability."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.models import LayerwiseNet


@dataclass
class Evaluation:
    """Test metrics of modules first+1..n (lists in depth order)."""

    per_module_acc: list[float]
    per_module_loss: list[float]
    ensemble_acc: float
    per_module_top5: list[float]  # the label among the 5 highest logits (all, with < 5 classes)
    first: int = 0  # the lists start at module first + 1 (a frozen prefix was not evaluated)
    logits: list[Tensor] | None = None  # with keep_logits: each module's test logits (host)
    labels: Tensor | None = None  # with keep_logits: the test labels, in the logits' order
    # with keep_outputs: the last evaluated module's output and the labels, batch by batch
    outputs: list[tuple[Tensor, Tensor]] | None = None


def _autocast(x: Tensor, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on x's device (as training ran); None: nothing at all."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(x.device.type, dtype)


def logit_counts(logits: Tensor, y: Tensor, first: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(correct, loss sum, top-5 correct) per module and the ensemble's correct, on the device.

    `logits` is modules x images x classes for modules first+1.. . The ensemble is
    Z = sum_j 2^j z_j over the heads' logits (Belilovsky et al.), so deeper, better heads
    dominate. Evaluation and the final summary's reuse of kept logits both count with this.
    """
    logits = logits.float()
    losses = torch.stack([F.cross_entropy(z, y, reduction="sum") for z in logits])
    hits = (logits.argmax(-1) == y).sum(-1)
    best5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # n x B x 5
    hits5 = (best5 == y[:, None]).any(-1).sum(-1)
    n = first + len(logits)
    weights = 2.0 ** torch.arange(first + 1, n + 1, device=logits.device, dtype=logits.dtype)
    ensemble = (weights[:, None, None] * logits).sum(0)
    return hits, losses, hits5, (ensemble.argmax(-1) == y).sum()


@torch.inference_mode()
def evaluate(
    model: LayerwiseNet,
    batches: Iterable[tuple[Tensor, Tensor]],
    upto: int | None = None,
    autocast: torch.dtype | None = None,
    start: int = 0,
    first: int | None = None,
    keep_logits: bool = False,
    keep_outputs: int = 0,
) -> Evaluation:
    """Accuracy and loss of modules first+1..upto's auxiliary heads, and their layer ensemble.

    Counts stay on the device; the host reads them once at the end. `autocast` is the dtype
    training ran its forward passes in (None: fp32). With `start` > 0 the batches hold module
    start+1's inputs (a frozen prefix's cached outputs). Modules before `first` (default
    `start`) run without their heads: a frozen module's head has nothing new to say.
    `keep_logits` also returns every evaluated head's logits (on the host) and the labels.
    `keep_outputs` > 0 also returns module upto's outputs (on the device) while they fit in
    that many bytes; past it they are dropped (None), so memory stays bounded.
    """
    was_training = model.training
    model.eval()
    n = len(model) if upto is None else upto
    first = start if first is None else first
    totals: list[Tensor] | None = None
    kept: list[list[Tensor]] = [[] for _ in range(first, n)]
    labels: list[Tensor] = []
    outputs: list[tuple[Tensor, Tensor]] | None = [] if keep_outputs > 0 else None
    seen = kept_bytes = 0
    for x, y in batches:
        with _autocast(x, autocast):
            for module in model.trunk[start:first]:
                x = module(x)
            per_module, x = model.logits_and_output(x, n, first)
        if outputs is not None:
            kept_bytes += x.numel() * x.element_size()
            if kept_bytes > keep_outputs:
                outputs = None
            else:
                outputs.append((x, y))
        logits = torch.stack([z.float() for z in per_module])  # n x B x C
        counts = logit_counts(logits, y, first)
        totals = list(counts) if totals is None else [t + c for t, c in zip(totals, counts)]
        if keep_logits:
            for store, z in zip(kept, logits):
                store.append(z)
            labels.append(y)
        seen += len(y)
    model.train(was_training)
    assert totals is not None, "no test batches"
    correct, loss_sum, top5, ensemble_correct = totals
    return Evaluation(
        per_module_acc=(correct.double() / seen).tolist(),
        per_module_loss=(loss_sum.double() / seen).tolist(),
        ensemble_acc=float(ensemble_correct) / seen,
        per_module_top5=(top5.double() / seen).tolist(),
        first=first,
        logits=[torch.cat(z).cpu() for z in kept] if keep_logits else None,
        labels=torch.cat(labels).cpu() if keep_logits else None,
        outputs=outputs,
    )


def evaluation_of_logits(logits: list[Tensor], labels: Tensor) -> Evaluation:
    """Every module's metrics and the layer ensemble from kept test logits (modules 1..n),
    as `evaluate` would count them on the same logits: no forward pass at all."""
    correct, loss_sum, top5, ensemble_correct = logit_counts(torch.stack(logits), labels, 0)
    seen = len(labels)
    return Evaluation(
        per_module_acc=(correct.double() / seen).tolist(),
        per_module_loss=(loss_sum.double() / seen).tolist(),
        ensemble_acc=float(ensemble_correct) / seen,
        per_module_top5=(top5.double() / seen).tolist(),
    )


@torch.inference_mode()
def module_features(
    model: LayerwiseNet,
    batches: Iterable[tuple[Tensor, Tensor]],
    autocast: torch.dtype | None = None,
) -> tuple[list[Tensor], Tensor]:
    """Each module's output, averaged to 2x2 and flattened (as a depth-1 head sees it)."""
    model.eval()
    feats: list[list[Tensor]] = [[] for _ in model.trunk]
    labels = []
    for x, y in batches:
        for k, module in enumerate(model.trunk):
            with _autocast(x, autocast):
                x = module(x)
            feats[k].append(F.adaptive_avg_pool2d(x.float(), 2).flatten(1))
        labels.append(y)
    return [torch.cat(f) for f in feats], torch.cat(labels)


def linear_probe_accuracy(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    steps: int = 100,
) -> float:
    """Test accuracy of a multinomial logistic regression fitted on frozen features.

    Features are standardised with the training statistics; L-BFGS on the full batch, with a
    little weight decay, makes the probe deterministic and fast enough for every module.
    """
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    with torch.inference_mode(False), torch.enable_grad():
        train_x, train_y = train_x.clone(), train_y.clone()
        probe = torch.nn.Linear(train_x.shape[1], num_classes, device=train_x.device)
        opt = torch.optim.LBFGS(
            probe.parameters(), lr=1, max_iter=steps, line_search_fn="strong_wolfe"
        )

        def closure() -> Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(probe(train_x), train_y) + 1e-4 * probe.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            return (probe(test_x).argmax(-1) == test_y).float().mean().item()


def per_module_probe_accuracy(
    model: LayerwiseNet,
    train_batches: Iterable[tuple[Tensor, Tensor]],
    test_batches: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    autocast: torch.dtype | None = None,
) -> list[float]:
    """Linear separability of each module's features: Ma et al.'s diagnostic, in depth order."""
    train_feats, train_y = module_features(model, train_batches, autocast)
    test_feats, test_y = module_features(model, test_batches, autocast)
    return [
        linear_probe_accuracy(a, train_y, b, test_y, num_classes)
        for a, b in zip(train_feats, test_feats)
    ]
