"""Each Config field's help, from one source: the trailing comment of its line in Config's
source (or a line here for the few without one). papermill's parameters cell, `workbench run
--help`-style listings and the panel's tooltips all read it, so they never disagree.
"""

from __future__ import annotations

import functools
import inspect
import re

from workbench import config as config_module
from workbench.config import Config

# Short labels for the panel's widgets where the field name alone reads badly.
FIELD_LABELS = {
    "n_train": "train images",
    "n_test": "test images",
    "aux_depth": "aux depth (k)",
    "aux_type": "aux head",
    "aux_width": "aux width",
    "aux_pool": "aux pool (1cnn)",
    "lr": "learning rate",
    "lr_schedule": "lr schedule",
    "lr_step": "lr step (epochs)",
    "lr_decay": "lr decay",
    "n_modules": "modules",
    "n_units": "units",
    "tau": "tau (kinetic)",
    "eval_batch_size": "test batch",
    "data_dir": "data folder",
    "out": "run folder",
    "precise_bn": "precise BN",
    "last_aux_type": "last aux head",
    "last_aux_depth": "last aux depth",
    "extra_epochs_per_module": "extra epochs/module",
    "allow_modified_copy": "modified copy ok",
    "replay_buffer": "replay buffer (M)",
}


LINE_LENGTH = 100  # the project's ruff line length: the parameters cell is linted too


def field_label(name: str) -> str:
    """A short readable label for a field's widget: 'aux depth (k)' for aux_depth."""
    return FIELD_LABELS.get(name, name.replace("_", " "))


@functools.cache
def field_comments() -> dict[str, str]:
    """The trailing comment of each field in Config's source: the fields' one documentation."""
    comments = {}
    for line in inspect.getsource(Config).splitlines():
        match = re.match(r"\s+(\w+): [\w\[\], |]+ = .*?  # (.*)$", line)
        if match:
            comments[match.group(1)] = match.group(2).strip()
    return comments


# Help for the fields whose source line carries no comment.
_MORE_HELP = {
    "arch": "greedy-cnn, resnet20/32/56/110, resnet18, vgg11 or vgg13",
    "method": "sequential, parallel (DGL), multilap (TRGL laps) or end-to-end",
    "batch_size": "training minibatch size",
    "lr": "SGD learning rate at the start of each module's schedule",
    "lr_schedule": "per module: constant, step (see lr_step, lr_decay) or cosine",
    "lr_decay": "step schedule: the factor applied every lr_step epochs",
    "momentum": "SGD momentum",
    "weight_decay": "SGD weight decay",
    "label_smoothing": "cross-entropy label smoothing, from 0 up to (not including) 1",
    "device": "auto picks the GPU when there is one",
    "seed": "seed of the initialisation, the data order and the subsets",
}


def field_help(name: str, room: int = LINE_LENGTH, papermill: bool = True) -> str:
    """One line of help for a Config field, at most `room` characters, safe for papermill.

    papermill skips a parameter line holding more than one '=', so '=' in the source comment is
    written as ':' here (unless papermill is False: the panel's tooltips). Choice fields name
    their allowed values when the line has room.
    """
    comment = field_comments().get(name) or _MORE_HELP.get(name, "")
    comment = re.sub(r"^one of [A-Z_]+;\s*", "", comment)  # the list itself is named below
    if papermill:
        comment = comment.replace(" = ", ": ").replace("=", ":")
    candidates = [comment]
    choices = config_module.FIELD_CHOICES.get(name)
    if choices and not all(c in comment for c in choices):
        listed = f"one of {', '.join(choices)}"
        candidates = [f"{listed}; {comment}" if comment else listed, listed, comment]
    fitting = [c for c in candidates if c and len(c) <= room]
    return fitting[0] if fitting else (comment or name.replace("_", " "))[:room]
