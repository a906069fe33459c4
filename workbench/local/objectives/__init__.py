"""The local objectives: each file here is one, named after it (underscores read as dashes),
with a class `Objective` (see local/objective.py). Adding one is adding a file (and its
test): `objective` takes its name, and the panel, papermill and sweeps offer it.

The names are read from the folder without importing the files (or torch).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

DEFAULT = "cross-entropy"


def _discovered() -> tuple[str, ...]:
    names = sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(__path__))
    names = [n for n in names if not n.startswith("-")]
    return (DEFAULT, *[n for n in names if n != DEFAULT])


OBJECTIVES = _discovered()


def objective_class(name: str) -> Any:
    """The Objective class of the objective called `name` (one of OBJECTIVES)."""
    module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
    return module.Objective
