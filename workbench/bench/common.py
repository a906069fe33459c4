"""What every bench section shares: its names, sizes and the medians it reports."""

from __future__ import annotations

import statistics

SECTIONS = (
    "methods",
    "memory",
    "depth",
    "whole_runs",
    "callbacks",
    "fast_paths",
    "pipeline",
    "ddp",
    "compile",
    "loader",
)
METHODS = ("sequential", "parallel", "end-to-end")
WITH_GRAD = "sequential, prefix with grad"  # the memory the frozen prefix's no_grad saves
SIZES = {  # what --quick and the default measure, unless a flag says otherwise
    # quick: one thread, since two OpenMP threads crawl on a shared, oversubscribed CI runner
    "quick": {"n_train": 256, "n_test": 100, "width": 8, "repeats": 2, "depths": "2,4,8",
              "threads": 1, "skip": "compile,ddp"},
    "full": {"n_train": 0, "n_test": 0, "width": 0, "repeats": 5, "depths": "2,4,8,16",
             "threads": 0, "skip": ""},
}  # fmt: skip


def median_total(reps: list[list[float]]) -> float:
    """The median over repetitions of a repetition's total seconds."""
    return statistics.median(sum(rep) for rep in reps)


def median_parts(reps: list[list[float]]) -> list[float]:
    """Per part (phase), the median over repetitions."""
    return [statistics.median(part) for part in zip(*reps)]


def one_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]
