"""LocalLearner: one module of the network, its auxiliary head, its local objective and its own
SGD, with the precision and memory format it trains in.

A learner is a view over the model's own modules (state-dict keys never change). Most learn
one module; end-to-end training is a learner over every module whose gradients cross their
boundaries (its phase is `joint`): backprop from the last head through the whole trunk, the
other heads learning on detached features as read-out probes. The Trainer, the pipeline's
worker processes, DDP, checkpoints and precise BN all drive modules through it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from workbench.config import Config
from workbench.local import kinetic
from workbench.local.objective import LocalBatch, LocalInputs, Objective
from workbench.local.objectives import objective_class
from workbench.local.optim import autocast, make_optimizer, make_scaler, update
from workbench.models.flops import layer_flops

if TYPE_CHECKING:  # the precision is chosen in training/, which drives learners
    from workbench.training.device import Precision

Forward = Callable[[Tensor], Any]


class EnergyForward(nn.Module):
    """A trunk module whose forward also returns its kinetic energy: what a learner trains
    when the kinetic term is on (DDP and torch.compile wrap it as any module)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return kinetic.forward_with_energy(self.module, x)


def training_body(config: Config, module: nn.Module) -> nn.Module:
    """What a learner runs for a trunk module: the module, or with the kinetic term on, the
    module returning its energy too."""
    return EnergyForward(module) if kinetic.active(config) else module


@dataclass
class StepResult:
    """One step of a learner, per module it trains (on the device: nothing here syncs)."""

    output: Tensor  # the last module's output, detached: no gradient leaves the learner
    reported: list[Tensor]  # each module's loss as the training rows report it
    correct: list[Tensor]  # each module's correct predictions
    loss: list[Tensor]  # each module's loss whose finiteness counts (the net's, for the last)
    skipped: Tensor | None  # fp16: whether the loss scaler skipped the step; None without one


class LocalLearner:
    """Modules `modules` (0-indexed) with their heads, objectives and one optimizer.

    `trunk` and `heads` are the model's own modules (for parameters, state and BN);
    `bodies` and `classifiers` are what runs them: the same modules, or wrappers that share
    their parameters (torch.compile, DDP). `joint`: gradients cross the modules' boundaries.
    """

    def __init__(
        self,
        config: Config,
        modules: Sequence[int],
        trunk: Sequence[nn.Module],
        heads: Sequence[nn.Module],
        precision: Precision,
        device: torch.device,
        memory_format: torch.memory_format,
        bodies: Sequence[Forward] | None = None,
        classifiers: Sequence[Forward] | None = None,
        joint: bool = False,
    ):
        self.config, self.modules, self.joint = config, tuple(modules), joint
        self.trunk, self.heads = list(trunk), list(heads)
        if bodies is None:
            bodies = [training_body(config, m) for m in trunk]
        self.bodies = list(bodies)
        self.classifiers = list(classifiers) if classifiers is not None else list(heads)
        self.objectives: list[Objective] = [
            objective_class(config.objective)(config, k) for k in self.modules
        ]
        self.weights = [kinetic.weight(config, k) for k in self.modules]
        self.energy = kinetic.active(config)
        self.precision, self.device, self.memory_format = precision, device, memory_format
        self.scaler = make_scaler(precision, device)
        self.optimizer = make_optimizer(self.parameters(), config, fused=precision.scaled)

    @property
    def key(self) -> str:
        """The learner's name in checkpoints: its module's index, or 'all' (end-to-end)."""
        return "all" if self.joint else str(self.modules[0])

    @property
    def name(self) -> str:
        return "the net" if self.joint else f"module {self.modules[0] + 1}"

    def parameters(self) -> list[nn.Parameter]:
        """Its modules' and heads' parameters, module by module (the SGD's order)."""
        if self.joint:  # the model's own order: every module, then every head
            return [p for part in (*self.trunk, *self.heads) for p in part.parameters()]
        return [p for part in self.parts() for p in part.parameters()]

    def parts(self) -> list[nn.Module]:
        """Its modules and heads, each module followed by its head."""
        return [part for pair in zip(self.trunk, self.heads) for part in pair]

    def norm_layers(self) -> list[_BatchNorm]:
        """The BatchNorm layers precise BN re-estimates after this learner trains."""
        return [m for part in self.parts() for m in part.modules() if isinstance(m, _BatchNorm)]

    def flops(self, x: Tensor) -> tuple[list[int], list[int]]:
        """Forward FLOPs per image of each of its modules and heads, fed inputs shaped as x
        (the model's fact, counted by models/flops.py)."""
        return layer_flops(self.trunk, self.heads, x)

    def train(self) -> None:
        for part in self.parts():
            part.train()

    def logits(self, h: Tensor, i: int = 0) -> Tensor:
        """The prediction of the learner's i-th module's head on that module's output h."""
        return self.classifiers[i](h)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def restart_momentum(self) -> None:
        self.optimizer.state.clear()  # a fresh optimizer: SGD's momentum, Adam's moments

    def release(self) -> None:
        """Drop the gradients of a learner that will not train again."""
        for p in self.parameters():
            p.grad = None

    # -- a step --------------------------------------------------------------------------------
    def step(self, inputs: LocalInputs, lr: float) -> StepResult:
        """One batch: forward, each module's local loss, backward, update."""
        x = inputs.x
        if x.requires_grad:  # a producer's graph must never reach a learner
            raise RuntimeError(f"{self.name} got an input that requires grad")
        x = x.contiguous(memory_format=self.memory_format)
        self.set_lr(lr)
        # the forward only; backward follows the forward's dtypes
        with autocast(self.device, self.precision.dtype):
            if self.joint:
                out, losses, total = self._joint_forward(x, inputs)
            else:
                out, losses, total = self._local_forward(x, inputs)
        skipped = update(total, self.optimizer, self.scaler)
        correct = [(part.logits.argmax(-1) == inputs.y).sum() for part in losses]
        checked = [part.loss for part in losses]
        checked[-1] = total
        return StepResult(out.detach(), [p.reported for p in losses], correct, checked, skipped)

    def _local_forward(self, x: Tensor, inputs: LocalInputs) -> tuple[Tensor, list, Tensor]:
        out = self.bodies[0](x)
        if self.energy:
            out, energy = out
        part = self.objectives[0].loss(self.classifiers[0], self._batch(out, x, inputs))
        total = part.loss + self.weights[0] * energy if self.energy else part.loss
        return out, [part], total

    def _joint_forward(self, x: Tensor, inputs: LocalInputs) -> tuple[Tensor, list, Tensor]:
        """Backprop through every module from the last head; the other heads learn on
        detached features (read-out probes)."""
        losses, energy = [], x.new_zeros((), dtype=torch.float32)
        last = len(self.modules) - 1
        for i, (body, head) in enumerate(zip(self.bodies, self.classifiers)):
            before, x = x, body(x)
            if self.energy:
                x, e = x
                energy = energy + self.weights[i] * e
            seen = x if i == last else x.detach()
            losses.append(self.objectives[i].loss(head, self._batch(seen, before, inputs)))
        total = torch.stack([part.loss for part in losses]).sum()
        return x, losses, total + energy if self.energy else total

    @staticmethod
    def _batch(out: Tensor, x: Tensor, inputs: LocalInputs) -> LocalBatch:
        return LocalBatch(output=out, input=x, labels=inputs.y, image=inputs.image)

    # -- state ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """A one-module learner's module, head, optimizer and loss scaler states."""
        (module,), (head,) = self.trunk, self.heads
        return {
            "trunk": module.state_dict(),
            "head": head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load(self, state: dict[str, Any]) -> None:
        (module,), (head,) = self.trunk, self.heads
        module.load_state_dict(state["trunk"])
        head.load_state_dict(state["head"])
        if state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") is not None and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
