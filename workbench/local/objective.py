"""What a local objective is: the inputs it needs, the head it builds, the loss it computes.

An objective is one file in objectives/ with a class `Objective` deriving from this one. It
declares which of INPUTS its loss reads; every training path (sequential, parallel, multilap,
the pipeline's queues, DDP) hands it those, and a config whose fast path cannot (the feature
cache has no images) is refused by `check`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from workbench.config import DEFAULTS, Config, ConfigError
from workbench.models.heads import HeadSpec, build_head

# output: the module's output; input: what entered the module; labels; image: the batch's
# images as module 1 saw them, before normalization (pixel / 255)
INPUTS = ("output", "input", "labels", "image")
# the config's choices of auxiliary head, which objectives with heads of their own ignore
HEAD_FIELDS = ("aux_type", "aux_depth", "aux_width", "aux_pool", "last_aux_type", "last_aux_depth")


@dataclass
class LocalInputs:
    """One batch as a module's objective sees it (image is None unless an objective needs it)."""

    x: Tensor  # the module's input
    y: Tensor  # labels
    image: Tensor | None = None  # the images module 1 saw, before normalization: pixel / 255


@dataclass
class LocalBatch:
    """What a loss reads: the module's output and input, the labels and (if asked) the image."""

    output: Tensor
    input: Tensor
    labels: Tensor
    image: Tensor | None


@dataclass
class LocalLoss:
    """A module's loss for one batch: `loss` is stepped on, `reported` is the training rows'
    loss column, `logits` give the rows' accuracy."""

    loss: Tensor
    reported: Tensor
    logits: Tensor


class Objective:
    """A local objective for module k of n. Subclasses set `needs` and override `loss`, and
    `build_head` where their head is more than the auxiliary classifier."""

    needs: ClassVar[frozenset[str]] = frozenset({"output", "labels"})
    summary: ClassVar[str] = ""
    own_heads: ClassVar[bool] = False  # builds its paper's heads: the aux_* fields do not apply

    def __init__(self, config: Config, k: int):
        self.config, self.k = config, k
        self.last = k == config.n_modules - 1  # the net's own output module

    @classmethod
    def problem(cls, config: Config) -> str | None:
        """Why this objective cannot mean anything with `config` (one line), or None."""
        if "image" in cls.needs and config.cache_features:
            return (
                f"cache_features: got true with objective {config.objective!r}, which reads "
                "the images and the cache holds only the frozen prefix's outputs; allowed: false"
            )
        if cls.own_heads:
            for name in HEAD_FIELDS:
                if getattr(config, name) != DEFAULTS[name]:
                    return (
                        f"{name}: got {getattr(config, name)!r} with objective "
                        f"{config.objective!r}, which builds its paper's own heads; allowed: "
                        f"{DEFAULTS[name]!r} (the default)"
                    )
        return None

    @classmethod
    def check(cls, config: Config) -> None:
        problem = cls.problem(config)
        if problem:
            raise ConfigError(problem)

    def build_head(self, spec: HeadSpec) -> nn.Module:
        """Module k's head; its forward gives the logits evaluation, the ensemble and the
        probes read (a loss that reads several of the head's parts gets them from one call of
        the head: under torchrun DDP wraps it and all-reduces only what its forward computed).
        The auxiliary classifier of the config's family and depth by default; with `dropout`,
        the last one reads the last unit's output dropped out, as every other unit's output is
        before the next unit reads it."""
        head = build_head(spec)
        if self.last and self.config.dropout:
            return nn.Sequential(nn.Dropout2d(self.config.dropout), head)
        return head

    def loss(self, head: nn.Module, batch: LocalBatch) -> LocalLoss:
        raise NotImplementedError
