"""Packages whose names load on first use, so importing the package does not import torch
(config validation reads `models.archs`, `models.heads` and `local.objectives` without it)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_names(table: dict[str, str]) -> Callable[[str], Any]:
    """A package's `__getattr__`: each name in `table` is imported from its module on first use."""

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(name)

    return __getattr__
