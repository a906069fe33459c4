"""A few variants of one config, trained one after another and compared module by module.

What the teaching notebooks run: `run_series(base, {"k=1": {"aux_depth": 1}, ...}, out_dir)`
trains each variant into its own run folder under `out_dir` and returns a `Comparison`.
A folder's name carries a hash of its config, so running a notebook again with the same
parameters reuses the finished runs (and resumes unfinished ones), while changed parameters
train new ones instead of clashing with the old folders.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workbench.batch.compare import Comparison, comparison_figures, comparison_table, read_json
from workbench.batch.notebook import EpochPrinter
from workbench.config import Config
from workbench.records import RESUMABLE_DIFFERENCES


def config_hash(config: Config) -> str:
    """Eight hex digits that change when anything but the run folder or device changes."""
    values = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_DIFFERENCES}
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]


def variant_configs(
    base: Config, variants: Mapping[str, Mapping[str, Any]], out_dir: str | Path
) -> dict[str, Config]:
    """Each variant's Config (validated, all before any training), in its own run folder."""
    configs = {}
    for label, changes in variants.items():
        config = base.replace(**changes)
        slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", label).strip("_") or "run"
        configs[label] = config.replace(out=str(Path(out_dir) / f"{slug}-{config_hash(config)}"))
    return configs


def run_series(
    base: Config,
    variants: Mapping[str, Mapping[str, Any]],
    out_dir: str | Path,
    every_epoch: bool = False,
) -> Comparison:
    """Train every variant of `base` (finished ones are reused) and compare them."""
    from workbench.training import run_experiment

    configs = variant_configs(base, variants, out_dir)
    printer = EpochPrinter(every_epoch=every_epoch)
    for label, config in configs.items():
        done = read_json(Path(config.out) / "summary.json").get("status") == "finished"
        print(f"== {label}" + (" (finished before: reused)" if done else ""), flush=True)
        summary = run_experiment(config, callbacks=[printer])
        if summary.get("status") != "finished":
            raise RuntimeError(f"{label}: the run ended as {summary.get('status')}")
    labels = list(configs)
    rows = comparison_table([c.out for c in configs.values()], labels)
    return Comparison(rows, comparison_figures(rows))
