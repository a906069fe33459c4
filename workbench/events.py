"""Training events and the stop flag: the seam between the training loop and its watchers.

The loop calls every callback with `(event, info)` at four moments (EVENTS) and checks a
`threading.Event` between steps, so a notebook's Stop button or a Ctrl-C ends the run cleanly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

Callback = Callable[[str, dict[str, Any]], None]
RUN_START, EPOCH_END, MODULE_DONE, RUN_END = "run_start", "epoch_end", "module_done", "run_end"
EVENTS = (RUN_START, EPOCH_END, MODULE_DONE, RUN_END)


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
