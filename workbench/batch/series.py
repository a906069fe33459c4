"""Variants of one config, each over several seeds, compared module by module with error bars.

What the teaching notebooks run: `run_series(base, {"k=1": {"aux_depth": 1}, ...}, out_dir,
seeds=[0, 1, 2])` trains every variant once per seed into its own run folder under `out_dir` and
returns a `Series`: a tidy table (one row per run and module), the mean and spread of every
variant and module, figures with error bars, and `effect()`, which says whether a difference is
larger than its spread. A folder's name carries a hash of its config, so running a notebook again
with the same parameters reuses the finished runs (and resumes unfinished ones), while changed
parameters train new ones instead of clashing with the old folders.

A run folder whose config.json, summary.json or metrics.jsonl cannot be read stays in `results`
as one row (status `unreadable`, the reason in `error`, no module), and every mean, spread and
curve is taken over the other runs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.batch.compare import UNREADABLE, read_compared_run, write_csv
from workbench.batch.notebook import EpochPrinter
from workbench.config import DEFAULTS, FIELD_INFO, Config
from workbench.records import (
    RESUMABLE_DIFFERENCES,
    Status,
    UnreadableFile,
    read_json_quietly,
    read_metrics,
)

# Results of full-scale runs (a results.csv each, named after its notebook), committed when one
# exists, so a notebook can draw the paper-scale result beside the laptop one.
FULL_SCALE_DIR = Path(__file__).resolve().parents[2] / "notebooks" / "full_scale"


def config_hash(config: Config) -> str:
    """Eight hex digits that change when anything but the run folder or device changes. A
    field added since folders were first named (FieldInfo.added) counts only off its default,
    so a folder named before it keeps its name."""
    values = {
        k: v
        for k, v in config.to_dict().items()
        if k not in RESUMABLE_DIFFERENCES and not (FIELD_INFO[k].added and v == DEFAULTS[k])
    }
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]


def variant_configs(
    base: Config,
    variants: Mapping[str, Mapping[str, Any]],
    out_dir: str | Path,
    seeds: Sequence[int] | None = None,
) -> dict[tuple[str, int], Config]:
    """Each (variant, seed)'s Config (validated, all before any training) in its own folder.

    `seeds=None` keeps each variant's own seed (one run per variant).
    """
    configs = {}
    for label, changes in variants.items():
        config = base.replace(**changes)
        slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", label).strip("_") or "run"
        for seed in [config.seed] if seeds is None else seeds:
            run = config.replace(seed=seed)
            out = Path(out_dir) / f"{slug}-s{seed}-{config_hash(run)}"
            configs[label, seed] = run.replace(out=str(out))
    return configs


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation; 0 for a single value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class Effect:
    """A claimed difference, measured: `better` minus `worse`, and the spread it must beat.

    The spread is sqrt(sd_better^2 + sd_worse^2), the seeds' standard deviations combined: a
    difference smaller than that is within what reseeding alone moves, and is not an effect.
    """

    claim: str
    better: float
    worse: float
    spread: float
    seeds: int

    @property
    def difference(self) -> float:
        return self.better - self.worse

    @property
    def holds(self) -> bool:
        return self.seeds >= 3 and self.difference > self.spread

    def __str__(self) -> str:
        verdict = (
            "shown: larger than the spread"
            if self.holds
            else ("not shown: fewer than 3 seeds" if self.seeds < 3 else "not shown at this scale")
        )
        return (
            f"{self.claim}: {self.better:.3f} vs {self.worse:.3f}, difference "
            f"{self.difference:+.3f}, spread {self.spread:.3f} over {self.seeds} seeds -> {verdict}"
        )


@dataclass
class Series:
    """Runs of several variants and seeds: tidy per-module results and their summaries."""

    # one row per run and module: variant, seed, module, test_acc...; one per unreadable run
    results: list[dict[str, Any]]
    variants: list[str]
    figures: dict[str, Any] = field(default_factory=dict)
    # one row per run and epoch: the network's (last module's) test accuracy after that epoch
    curves: list[dict[str, Any]] = field(default_factory=list)

    def measured(self, variant: str) -> list[dict[str, Any]]:
        """`variant`'s rows of readable runs (an unreadable run's row has no module)."""
        return [r for r in self.results if r["variant"] == variant and "module" in r]

    @property
    def unreadable(self) -> list[dict[str, Any]]:
        """The rows of runs that could not be read: variant, seed, status, error, run_dir."""
        return [r for r in self.results if r.get("status") == UNREADABLE]

    def values(self, variant: str, module: int = -1, metric: str = "test_acc") -> list[float]:
        """`metric` of `variant` at `module` (1-indexed; -1 the last) over its readable seeds."""
        rows = self.measured(variant)
        last = max((r["module"] for r in rows), default=0)
        k = last + 1 + module if module < 0 else module
        return [r[metric] for r in rows if r["module"] == k and r.get(metric) is not None]

    def summary(self) -> list[dict[str, Any]]:
        """Mean and spread (sample sd over seeds) of every variant and module."""
        metrics = [m for m in ("test_acc", "probe_acc") if any(m in r for r in self.results)]
        out = []
        for variant in self.variants:
            modules = sorted({r["module"] for r in self.measured(variant)})
            for k in modules:
                row: dict[str, Any] = {"variant": variant, "module": k}
                for metric in metrics:
                    values = self.values(variant, k, metric)
                    if values:
                        row[f"{metric}_mean"], row[f"{metric}_sd"] = mean_and_spread(values)
                row["seeds"] = len(self.values(variant, k))
                out.append(row)
        return out

    def headline(self) -> list[dict[str, Any]]:
        """Per variant: the last module's and the layer ensemble's accuracy, the wall time and
        the peak memory, mean and sd; with unreadable runs, how many each variant has."""
        out = []
        for variant in self.variants:
            firsts = [r for r in self.measured(variant) if r["module"] == 1]
            row: dict[str, Any] = {"variant": variant, "seeds": len(firsts)}
            if self.unreadable:
                row["unreadable"] = sum(r["variant"] == variant for r in self.unreadable)
            for metric in ("final_test_acc", "ensemble_test_acc", "wall_time_s",
                           "peak_memory_bytes"):  # fmt: skip
                values = [r[metric] for r in firsts if r.get(metric) is not None]
                if values:
                    row[f"{metric}_mean"], row[f"{metric}_sd"] = mean_and_spread(values)
            out.append(row)
        return out

    def frame(self) -> Any:
        """The headline table as a pandas DataFrame, rounded for reading."""
        import pandas as pd

        return pd.DataFrame(self.headline()).round(4)

    def module_frame(self) -> Any:
        """Mean and spread per variant and module, as a DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.summary()).round(4)

    def effect(
        self,
        claim: str,
        better: str,
        worse: str,
        module: int = -1,
        worse_module: int | None = None,
        metric: str = "test_acc",
    ) -> Effect:
        """Whether `better` beats `worse` at `module` by more than the spread (see Effect).

        `worse_module` compares two modules, of one variant or two (depth: last vs first).
        """
        b = self.values(better, module, metric)
        w = self.values(worse, module if worse_module is None else worse_module, metric)
        (mb, sb), (mw, sw) = mean_and_spread(b), mean_and_spread(w)
        return Effect(claim, mb, mw, math.hypot(sb, sw), min(len(b), len(w)))

    def curve_summary(self) -> list[dict[str, Any]]:
        """Per variant and epoch: the network's test accuracy, mean and sd over the seeds."""
        out = []
        for variant in self.variants:
            rows = [r for r in self.curves if r["variant"] == variant]
            for epoch in sorted({r["epoch"] for r in rows}):
                values = [r["test_acc"] for r in rows if r["epoch"] == epoch]
                mean, sd = mean_and_spread(values)
                out.append({"variant": variant, "epoch": epoch, "test_acc_mean": mean,
                            "test_acc_sd": sd, "seeds": len(values)})  # fmt: skip
        return out

    def crossing(self, a: str, b: str) -> str:
        """Where `a`'s accuracy-against-budget curve crosses `b`'s (their means), in words:
        the last budget at which the leader changes, and whether the final lead exceeds the
        spread; or that one leads at every budget measured."""
        by = {(r["variant"], r["epoch"]): r for r in self.curve_summary()}
        epochs = sorted(e for v, e in by if v == a and (b, e) in by)
        if not epochs:
            return f"{a} and {b}: no common budget measured"
        diffs = [by[a, e]["test_acc_mean"] - by[b, e]["test_acc_mean"] for e in epochs]
        last = epochs[-1]
        spread = math.hypot(by[a, last]["test_acc_sd"], by[b, last]["test_acc_sd"])
        ahead, behind = (a, b) if diffs[-1] > 0 else (b, a)  # at the largest budget
        end = (
            f"at {last} epochs {ahead} leads by {abs(diffs[-1]):.3f} (spread {spread:.3f}: "
            + ("larger" if abs(diffs[-1]) > spread else "not larger")
            + ")"
        )
        changes = [i for i in range(1, len(diffs)) if (diffs[i] > 0) != (diffs[i - 1] > 0)]
        if not changes:
            return f"no crossing within {last} epochs: {ahead} leads at every budget; {end}"
        i = changes[-1]
        return (
            f"{ahead} overtakes {behind} between {epochs[i - 1]} and {epochs[i]} epochs "
            f"(the curves cross {len(changes)} time{'s' if len(changes) > 1 else ''}); {end}"
        )

    def show(self, full_scale: Series | None = None) -> None:
        """Display the figures as figure JSON (plotly_mimetype): small, no widget state.

        `full_scale` (e.g. `full_scale_results(name)`) is drawn beside, dashed.
        """
        figures = self.figures if full_scale is None else series_figures(self, full_scale)
        for fig in figures.values():
            fig.show(renderer="plotly_mimetype")

    @classmethod
    def from_csv(cls, path: str | Path) -> Series:
        """A Series read back from its results.csv (numbers parsed, empty cells dropped)."""
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = [{k: _number(k, v) for k, v in row.items() if v != ""} for row in reader]
        # the header, not the first row: an unreadable run's row has no module or test_acc
        if not rows or not {"variant", "module", "test_acc"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: not a results.csv (needs variant, seed, module, test_acc)")
        series = cls(rows, list(dict.fromkeys(r["variant"] for r in rows)))
        series.figures = series_figures(series)
        return series

    def save(self, folder: str | Path, png: bool = True) -> list[Path]:
        """results.csv (tidy: variant, seed, module, test_acc, ...), summary.csv and figures."""
        from workbench.ui.plots import save_figures

        folder = Path(folder)
        write_csv(folder / "results.csv", self.results)
        write_csv(folder / "summary.csv", self.summary())
        saved = [folder / "results.csv", folder / "summary.csv"]
        if self.curves:
            write_csv(folder / "curves.csv", self.curves)
            saved.append(folder / "curves.csv")
        return [*saved, *save_figures(self.figures, folder, png=png)]


def _number(key: str, value: str) -> Any:
    if key in ("variant", "run_dir", "status", "error"):
        return value
    try:
        return int(value) if key in ("seed", "module", "peak_memory_bytes") else float(value)
    except ValueError:
        return value


def full_scale_results(name: str, folder: str | Path = FULL_SCALE_DIR) -> Series | None:
    """The committed results of a full-scale run for notebook `name`, or None when none exists."""
    path = Path(folder) / f"{name}.csv"
    return Series.from_csv(path) if path.is_file() else None


def series_results(runs: Mapping[tuple[str, int], str | Path]) -> list[dict[str, Any]]:
    """The tidy table of finished run folders: one row per (variant, seed, module), and one
    row (variant, seed, status `unreadable`, error, run_dir) per run that cannot be read."""
    rows = []
    for (variant, seed), path in runs.items():
        try:
            _, summary = read_compared_run(Path(path))
        except UnreadableFile as e:
            rows.append({"variant": variant, "seed": seed, "status": UNREADABLE,
                         "error": str(e), "run_dir": str(path)})  # fmt: skip
            continue
        accs = summary.get("per_module_test_acc") or []
        probes = summary.get("per_module_probe_acc") or []
        for k, acc in enumerate(accs, start=1):
            row: dict[str, Any] = {"variant": variant, "seed": seed, "module": k, "test_acc": acc}
            if probes:
                row["probe_acc"] = probes[k - 1]
            row.update(
                final_test_acc=summary.get("final_test_acc"),
                ensemble_test_acc=summary.get("ensemble_test_acc"),
                wall_time_s=summary.get("wall_time_s"),
                peak_memory_bytes=summary.get("peak_memory_bytes"),
                run_dir=str(path),
            )
            rows.append(row)
    return rows


def series_curves(runs: Mapping[tuple[str, int], str | Path]) -> list[dict[str, Any]]:
    """One row per run and epoch: the test accuracy of the run's last module after each of its
    epochs, numbered as the run counts them (global_epoch: for parallel and end-to-end runs
    epochs of the whole net, the budget axis on which they compare; sequentially, the last
    module's epochs come after every earlier module's). Unreadable runs have none (their row
    in series_results says why)."""
    rows = []
    for (variant, seed), path in runs.items():
        try:  # series_results' test, so that a run without a row has no curve either
            read_compared_run(Path(path))
        except UnreadableFile:
            continue
        tests = [r for r in read_metrics(Path(path)) if r.get("split") == "test"]
        last = max((r["module"] for r in tests), default=0)
        rows += [
            {"variant": variant, "seed": seed, "epoch": r["global_epoch"], "test_acc": r["acc"]}
            for r in tests
            if r["module"] == last
        ]
    return rows


def series_figures(series: Series, full_scale: Series | None = None) -> dict[str, Any]:
    """Accuracy against depth with error bars (mean +- sd over seeds); probes when measured.

    A `full_scale` series is drawn dashed beside it, its variants named "full scale: ...".
    """
    from workbench.ui.plots import depth_band_figure

    summary = series.summary()
    reference = full_scale.summary() if full_scale is not None else None
    figures = {
        "depth": depth_band_figure(summary, "test_acc", "Test accuracy against depth", reference)
    }
    if series.curves:
        from workbench.ui.plots import budget_band_figure

        figures["budget"] = budget_band_figure(
            series.curve_summary(), "The network's test accuracy against its training budget"
        )
    if any("probe_acc_mean" in r for r in summary):
        figures["separability"] = depth_band_figure(
            summary, "probe_acc", "Linear separability (probe accuracy) against depth", reference
        )
    return figures


def run_series(
    base: Config,
    variants: Mapping[str, Mapping[str, Any]],
    out_dir: str | Path,
    seeds: Sequence[int] | None = None,
    every_epoch: bool = False,
) -> Series:
    """Train every variant of `base` once per seed (finished runs are reused) and compare."""
    from workbench.training import run_experiment

    configs = variant_configs(base, variants, out_dir, seeds)
    printer = EpochPrinter(every_epoch=every_epoch)
    for (label, seed), config in configs.items():
        # an unreadable summary is not a finished run: run_experiment resumes or refuses it
        done = read_json_quietly(Path(config.out) / "summary.json").get("status") == Status.FINISHED
        print(f"== {label}, seed {seed}" + (" (finished before: reused)" if done else ""))
        summary = run_experiment(config, callbacks=[printer])
        if summary.get("status") != Status.FINISHED:
            raise RuntimeError(f"{label}, seed {seed}: the run ended as {summary.get('status')}")
    folders = {key: c.out for key, c in configs.items()}
    series = Series(series_results(folders), list(variants), curves=series_curves(folders))
    series.figures = series_figures(series)
    return series
