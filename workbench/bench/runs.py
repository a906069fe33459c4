"""Sections that time whole runs: per method, split into their parts; with and without the
live plots."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

from workbench.bench.common import METHODS, median_total, one_line
from workbench.training.timing import PARTS


class RunSections:
    """The Bench's whole-run sections (they read its config, device and side_by_side)."""

    def whole_runs(self) -> dict[str, Any]:
        """Each method's whole run (one epoch per module, the CLI's callbacks), its wall time
        split into data, training, evaluation, BN re-estimates, callbacks and checkpoints."""
        from workbench.events import TqdmProgress
        from workbench.training import run_experiment

        splits: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}

        def run(method: str) -> list[float]:
            config = self.config.replace(method=method)
            with tempfile.TemporaryDirectory(dir=self.tmp) as folder, open(os.devnull, "w") as null:
                summary = run_experiment(
                    config.replace(out=folder + "/run"), callbacks=[TqdmProgress(file=null)]
                )
            splits[method].append(summary["time_split_s"])
            return [summary["time_split_s"]["total"]]

        self.side_by_side({m: lambda m=m: run(m) for m in METHODS})
        out: dict[str, Any] = {
            "what": "run_experiment as `workbench run` calls it (its progress bar, to /dev/null), "
            "one epoch per module; seconds, median over the repeats (the warm-up dropped)",
            "parts": [*PARTS, "other"],
        }
        for method, runs in splits.items():
            timed = runs[1:] or runs
            median = {k: statistics.median(r[k] for r in timed) for k in timed[0]}
            out[method] = {
                **median,
                "share": {k: median[k] / median["total"] for k in (*PARTS, "other")},
            }
        return out

    def callbacks(self) -> dict[str, Any]:
        """Whole runs (sequential, one epoch per module) with and without the live plots."""
        try:
            from workbench.ui.live import LivePlots
        except ImportError as e:
            return {"skipped": f"workbench.ui.live cannot be imported ({one_line(e)})"}
        from workbench.training import run_experiment

        config = self.config.replace(method="sequential")
        plots = LivePlots(config.n_modules)  # built once: a notebook builds it once too
        inside: list[float] = []

        def timed(event: str, info: dict[str, Any]) -> None:
            t = time.perf_counter()
            plots(event, info)
            inside[-1] += time.perf_counter() - t

        def run(callbacks: list) -> list[float]:
            with tempfile.TemporaryDirectory(dir=self.tmp) as folder:
                t = time.perf_counter()
                run_experiment(config.replace(out=folder + "/run"), callbacks=callbacks)
                return [time.perf_counter() - t]

        def with_plots() -> list[float]:
            inside.append(0.0)
            return run([timed])

        def watched(event: str, info: dict[str, Any]) -> None:
            pass  # a watched run makes its time estimate: both runs pay for it, plots or not

        reps = self.side_by_side({"without": lambda: run([watched]), "with": with_plots})
        without, with_ = median_total(reps["without"]), median_total(reps["with"])
        return {
            "callback": "workbench.ui.live.LivePlots (throttled redraws, as in the notebook)",
            "run": "run_experiment, sequential, one epoch per module, data loading included; "
            "'without' has a callback that does nothing, so both make the time estimate",
            "without_s": without,
            "with_s": with_,
            "ratio": with_ / without,
            "inside_callback_s": statistics.median(inside),
        }
