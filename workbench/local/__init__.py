"""The local learner: one module of the network with its auxiliary head, its local objective
and its own optimizer, which is what layer-wise learning studies.

    learner.py     LocalLearner: a view over the model's modules and heads with their objective,
                   optimizer, precision and memory format; `step`, `logits`, `state`/`load`
    objective.py   what an objective is: the inputs it needs, its head, its loss
    objectives/    the objectives, one file each; a file's name is the objective's name
    kinetic.py     TRGL's kinetic-energy regularizer, which any objective on a residual trunk
                   can carry; runs without it never compute it
    optim.py       the optimizer (SGD or Adam) and its update (with fp16's loss scaling)

The Trainer (training/engine.py), the pipeline's worker processes, DDP, checkpoints and precise
BN all drive modules through LocalLearner. Importing this package does not import torch
(config validation reads the objectives' names); the names below load on first use.
"""

from __future__ import annotations

from workbench.lazy import lazy_names

_LAZY = {
    "LocalLearner": "workbench.local.learner",
    "LocalInputs": "workbench.local.objective",
    "StepResult": "workbench.local.learner",
    "make_optimizer": "workbench.local.optim",
    "update": "workbench.local.optim",
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_names(_LAZY)
