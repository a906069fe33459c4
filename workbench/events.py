"""Training events and the stop flag: the seam between the training loop and its watchers.

The loop calls every callback with `(event, info)` at six moments (EVENTS) and checks a
`threading.Event` between steps, so a notebook's Stop button or a Ctrl-C ends the run cleanly.
ESTIMATE comes once per process, after the first steps: `seconds` the rest of the run should
take, `images_per_s`, `epochs_left`, `device`, and the memory estimate made before training
(`memory_bytes`: the peak; `memory_held_bytes`, `memory_available_bytes`: what the process
held and what was free then). A watcher may stop a run that would take longer
than it should without asking (the CLI and the panel do, above CONFIRM_ABOVE_S).
PROGRESS comes inside an epoch, after its first step and then every half second or so:
`step`, `steps`, `epoch`, `global_epoch`, `modules`, `images_per_s` (this epoch's so far),
`seconds_left`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

Callback = Callable[[str, dict[str, Any]], None]
RUN_START, EPOCH_END, MODULE_DONE, RUN_END = "run_start", "epoch_end", "module_done", "run_end"
ESTIMATE, PROGRESS = "estimate", "progress"
EVENTS = (RUN_START, ESTIMATE, PROGRESS, EPOCH_END, MODULE_DONE, RUN_END)
CONFIRM_ABOVE_S = 24 * 3600.0  # a run estimated longer than this waits for a confirmation


def format_duration(seconds: float) -> str:
    """`40 s`, `12 min`, `3.5 h`, `24 h`, `2.1 days`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f}".removesuffix(".0") + " h"
    return f"{seconds / 86400:.1f} days"


def format_bytes(n: float) -> str:
    """`512 MiB`, `1.5 GiB`."""
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.0f} MiB"


def describe_estimate(info: dict[str, Any]) -> str:
    """One line for an ESTIMATE event (with the run's memory estimate, where it has one)."""
    line = (
        f"estimated {format_duration(info['seconds'])} for the rest of this run "
        f"({info['epochs_left']} epochs to go, {info['images_per_s']:.0f} images/s on "
        f"{info['device']} so far)"
    )
    if info.get("memory_bytes"):
        line += (
            f"; peak memory about {format_bytes(info['memory_bytes'])} of "
            f"{format_bytes(info['memory_available_bytes'] + info['memory_held_bytes'])}"
        )
    return line


class StopRequested(Exception):
    """Raised inside the loop when the stop flag is set; the run ends with status 'stopped'."""


class TqdmProgress:
    """A terminal progress bar over every epoch of every module."""

    def __init__(self, **tqdm_kwargs: Any):
        self.kwargs = tqdm_kwargs
        self.bar: tqdm | None = None

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == RUN_START:
            self.bar = tqdm(
                total=info["total_epochs"],
                initial=info["epochs_done"],
                unit="epoch",
                **self.kwargs,
            )
        elif event == EPOCH_END and self.bar is not None:
            module = info["modules"][-1]
            acc = info["test_acc"].get(module)
            self.bar.set_postfix(
                module=module,
                test_acc=f"{acc:.3f}" if acc is not None else "-",
                img_s=f"{info['images_per_s']:.0f}",
            )
            self.bar.update(1)
        elif event == RUN_END and self.bar is not None:
            self.bar.close()
