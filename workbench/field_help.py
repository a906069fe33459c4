"""Each Config field's help and label, read from its FieldInfo (config.py): papermill's
parameters cell, `workbench run --help`-style listings and the panel's tooltips all read it,
so they never disagree.
"""

from __future__ import annotations

import re

from workbench import config as config_module

LINE_LENGTH = 100  # the project's ruff line length: the parameters cell is linted too


def field_label(name: str) -> str:
    """A short readable label for a field's widget: 'aux depth (k)' for aux_depth."""
    return config_module.FIELD_INFO[name].label or name.replace("_", " ")


def field_comments() -> dict[str, str]:
    """Each field's one line of help, as Config declares it (FieldInfo.help)."""
    return {name: info.help for name, info in config_module.FIELD_INFO.items()}


def field_help(name: str, room: int = LINE_LENGTH, papermill: bool = True) -> str:
    """One line of help for a Config field, at most `room` characters, safe for papermill.

    papermill skips a parameter line holding more than one '=', so '=' in the source comment is
    written as ':' here (unless papermill is False: the panel's tooltips). Choice fields name
    their allowed values when the line has room.
    """
    comment = config_module.FIELD_INFO[name].help
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
