"""The memory section: peak training memory of every method and objective as the net is cut
into more modules, beside end-to-end training with and without gradient checkpointing.

InfoPro's Table 3 compares end-to-end training, gradient checkpointing and InfoPro at K = 2, 3,
4 on one net; this measures the same on the bench's net, for every objective in
local/objectives/ (trained in parallel, as InfoPro and PredSim train) and each method with
cross-entropy, at each of `--memory-modules` (default 2, 4, 8).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from workbench.bench.common import WITH_GRAD

E2E, CHECKPOINTED = "end-to-end", "end-to-end, checkpointed"


def checkpointed(module: Any, segments: int) -> Any:
    """A trunk module (a sequence of units) run in `segments` segments whose activations are
    recomputed in backward instead of kept (torch.utils.checkpoint, non-reentrant): gradient
    checkpointing, the end-to-end memory baseline InfoPro's Table 3 compares with."""
    import torch
    from torch.utils.checkpoint import checkpoint_sequential

    class Checkpointed(torch.nn.Module):
        def __init__(self, inner: torch.nn.Sequential):
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> Any:
            if not torch.is_grad_enabled():
                return self.inner(x)
            return checkpoint_sequential(self.inner, segments, x, use_reentrant=False)

    return Checkpointed(module)


def variants(config: Any) -> list[tuple[str, Any, dict[str, Any]]]:
    """(label, config, Variant options) of every row: end-to-end training of the whole net
    (one module: no probes), and checkpointed in as many segments as `config` has modules;
    the layer-wise methods with the config's objective, sequential's prefix under autograd,
    and each other objective in parallel (with its paper's own heads where it builds them)."""
    from workbench.config import DEFAULTS
    from workbench.local.objective import HEAD_FIELDS
    from workbench.local.objectives import OBJECTIVES, objective_class

    whole = config.replace(method="end-to-end", n_modules=1)  # the net and its last head only
    rows = [
        (E2E, whole, {}),
        (CHECKPOINTED, whole, {"checkpoint": config.n_modules}),  # a segment per module
        ("sequential", config.replace(method="sequential"), {}),
        (WITH_GRAD, config.replace(method="sequential"), {"prefix_mode": "grad"}),
        ("parallel", config.replace(method="parallel"), {}),
    ]
    for name in OBJECTIVES:
        if name == config.objective:
            continue
        c = config.replace(method="parallel", objective=name)
        if objective_class(name).own_heads:
            c = c.replace(**{f: DEFAULTS[f] for f in HEAD_FIELDS})
        rows.append((f"parallel, {name}", c, {}))
    return rows


class MemorySections:
    """The Bench's memory section (it reads its config, data, device and trainer)."""

    def memory(self) -> dict[str, Any]:
        """Peak memory of two training steps per phase of each row, at each module count."""
        steps = 2 * self.config.batch_size
        data = dataclasses.replace(
            self.data, train_x=self.data.train_x[:steps], train_y=self.data.train_y[:steps]
        )
        from workbench.models.archs import architecture

        counts = [k for k in self.memory_modules if self.deepest(k) == k]
        out: dict[str, Any] = {"n_modules": counts, "how": self.memory_how(), "rows": []}
        skipped = [k for k in self.memory_modules if k not in counts]
        if skipped:
            out["skipped"] = f"{self.config.arch} has fewer units than {skipped[0]} modules"
        net = self.config  # one net, cut into each count of modules
        if architecture(net).kind == "plain" and architecture(net).configurable_depth:
            net = net.replace(n_units=net.n_units or max(counts, default=1))
        out["units"] = net.n_units or None
        for k in counts:
            e2e = None
            for label, config, options in variants(net.replace(n_modules=k)):
                trainer = self.trainer(config, data)
                trainer.set_options(**options)
                params = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
                peak = self.peak_memory(trainer)
                del trainer
                e2e = e2e or peak["peak_bytes"]
                # the run's own estimate (memory_estimate.py) knows configs, not the bench's
                # options (checkpointing, a prefix under autograd): those rows have none
                estimate = None if options else self.estimated_training_bytes(config, data)
                out["rows"].append(
                    {"variant": label, "n_modules": k, **peak, "parameter_bytes": params,
                     "ratio_to_end_to_end": peak["peak_bytes"] / e2e,
                     "estimated_bytes": estimate,
                     "estimate_to_measured": estimate / peak["peak_bytes"] if estimate else None}
                )  # fmt: skip
                self.log(f"memory, {k} modules, {label}: {peak['peak_bytes'] / 2**20:.1f} MiB")
        return out

    def estimated_training_bytes(self, config: Any, data: Any) -> int:
        """What run_experiment estimates the same steps allocate (gradients, optimizer state,
        activations), before training."""
        from workbench.training.memory_estimate import estimate_memory

        memory = estimate_memory(config, data.num_classes, self.device, len(data.train_y), 0)
        return memory.training

    def memory_how(self) -> str:
        if self.device.type == "cuda":
            return (
                "CUDA max_memory_allocated, reset before each row; peak_bytes is the peak "
                "minus what was allocated before its first step (weights, resident data)"
            )
        return (
            "bytes of the tensors allocated during training (a TorchDispatchMode counting new "
            "output storages until they are freed), peak over the steps; weights and data made "
            "before the first step are not counted"
        )

    def peak_memory(self, trainer: Any) -> dict[str, int]:
        self.sync()
        return peak_of(trainer, self.device)


def peak_of(trainer: Any, device: Any) -> dict[str, int]:
    """Peak bytes that training every phase of `trainer` once (then releasing it, as fit does)
    allocates: CUDA's allocator on a GPU (less what was allocated before the first step),
    the bytes of tensors made during training on the CPU."""
    import torch

    from workbench.memory import tensor_memory

    def train() -> None:
        for phase in trainer.phases:
            trainer.train_pass(phase, 0)
            trainer.end_phase(phase)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        train()
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_bytes": peak - before, "cuda_max_allocated_bytes": peak}
    with tensor_memory() as tracked:
        train()
    return {"peak_bytes": tracked.peak}


def training_peak_bytes(config: Any, steps: int = 2) -> int:
    """Peak training memory of `config` as the bench measures it: `steps` batches per phase on
    its device, with the activations, gradients, optimizer state and heads it allocates
    (weights and data made before the first step not counted). A notebook's memory column:
    a process's peak resident set would carry what earlier runs in the kernel left behind."""
    import tempfile

    from workbench.bench.variants import variant_class
    from workbench.config import ConfigError
    from workbench.data import load_data
    from workbench.models import build_model
    from workbench.records import RunDir
    from workbench.training.device import resolve_device

    if config.dataset_info.streamed:
        raise ConfigError(
            f"dataset: got {config.dataset!r}, streamed from files; allowed: a dataset held in "
            "memory (mnist-5k, mnist, fashion-mnist, cifar10, ...) for training_peak_bytes"
        )
    device = resolve_device(config.device)
    data = load_data(config)
    n = steps * config.batch_size
    data = dataclasses.replace(data, train_x=data.train_x[:n], train_y=data.train_y[:n])
    with tempfile.TemporaryDirectory() as folder:
        config = config.replace(out=folder + "/run")
        model = build_model(config, data.num_classes).to(device)
        trainer = variant_class()(config, RunDir(Path(folder), config), model, data, device)
        try:
            return peak_of(trainer, device)["peak_bytes"]
        finally:
            trainer.close()


def memory_markdown(mem: dict[str, Any]) -> list[str]:
    """The memory table: a row per variant, a column per module count (MiB, x end-to-end)."""
    counts = mem["n_modules"]
    cells: dict[str, dict[int, str]] = {}
    for row in mem["rows"]:
        mib, ratio = row["peak_bytes"] / 2**20, row["ratio_to_end_to_end"]
        size = f"{mib:,.0f}" if mib >= 100 else f"{mib:.3g}"
        cells.setdefault(row["variant"], {})[row["n_modules"]] = f"{size} ({ratio:.2f}x)"
    lines = ["| variant | " + " | ".join(f"K = {k}" for k in counts) + " |"]
    lines.append("|" + "---|" * (len(counts) + 1))
    for variant, by_k in cells.items():
        lines.append(f"| {variant} | " + " | ".join(by_k.get(k, "") for k in counts) + " |")
    note = [mem["skipped"]] if "skipped" in mem else []
    return [
        "## Peak training memory (MiB, and x end-to-end at the same K)",
        "\n".join(lines),
        *note,
        f"Measured as: {mem['how']}. Objectives other than the run's train in parallel, with "
        "the config's optimizer.",
        *estimate_markdown(mem),
    ]


def estimate_markdown(mem: dict[str, Any]) -> list[str]:
    """The estimate a run makes before training, against the measured peak: a row per
    variant, the ratio at each module count."""
    counts = mem["n_modules"]
    ratios: dict[str, dict[int, str]] = {}
    for row in mem["rows"]:
        if row.get("estimate_to_measured"):
            ratios.setdefault(row["variant"], {})[row["n_modules"]] = (
                f"{row['estimate_to_measured']:.2f}"
            )
    if not ratios:
        return []
    lines = ["| variant | " + " | ".join(f"K = {k}" for k in counts) + " |"]
    lines.append("|" + "---|" * (len(counts) + 1))
    for variant, by_k in ratios.items():
        lines.append(f"| {variant} | " + " | ".join(by_k.get(k, "") for k in counts) + " |")
    return [
        "## The memory estimate against the measured peak (estimated / measured)",
        "\n".join(lines),
        "The estimate is what `workbench run` computes before training (memory_estimate.py: "
        "gradients, optimizer state and the activations a step keeps, from the net traced on "
        "the meta device) for the same steps; rows the bench trains with options the config "
        "does not hold (checkpointing, a prefix under autograd) have none.",
    ]
