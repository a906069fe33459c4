"""summary.json's schema: one typed record of a run's state and results.

training/run.py builds it, the Trainer (and the pipeline) update it as modules finish, and it
is written atomically after every epoch and at the end. Every key a reader may look for is a
field here; a field marked `later` is left out of the file while it is None (a running run has
no `finished_at`, a plain run no `pipeline_workers`), so the file holds what is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from workbench.records import Status


def later(default: Any = None) -> Any:
    """A field that appears in summary.json once it has a value."""
    return field(default=default, metadata={"later": True})


@dataclass
class Summary:
    """One run's summary.json (see the module's docstring)."""

    status: str = Status.RUNNING
    run_dir: str = ""
    # what ran
    method: str = ""
    objective: str = ""
    arch: str = ""
    n_modules: int = 0
    device: str = ""
    device_name: str = ""
    precision: str = ""  # what ran: precision=auto chooses by the device
    precision_reason: str = ""
    tf32: bool = False  # whether TF32 was in effect
    data: dict[str, Any] = field(default_factory=dict)  # the data's provenance
    eval_protocol: str = ""
    world_size: int = 1  # torchrun processes training the run
    pipeline: bool = False
    replay_buffer: int = 0
    test_split: Any = None
    trunk_params: list[int] = field(default_factory=list)
    head_params: list[int] = field(default_factory=list)
    started_at: str = ""
    # progress and results
    per_module_test_acc: list[float] = field(default_factory=list)
    per_module_test_top5: list[float | None] = field(default_factory=list)
    final_test_acc: float | None = None
    final_test_top5: float | None = None
    ensemble_test_acc: float | None = None
    modules_finished: int = 0
    epochs_done: int | None = later()  # epochs trained so far (every module's counted)
    resumed_from: dict[str, int] | None = None  # where a resumed run took up
    recovered: str | None = later()  # how an unreadable last.pt was replaced
    best_epoch: int | None = later()  # TRGL's protocol (eval_protocol trgl-best)
    best_module: int | None = later()
    last_epoch_test_acc: float | None = later()
    per_module_probe_acc: list[float] | None = later()
    wall_time_s: float | None = later()
    peak_memory_bytes: int | None = later()
    eval_batch_size: int | None = later()
    time_split_s: dict[str, float] | None = later()
    finished_at: str | None = later()
    stopped_by: str | None = later()  # the signal that stopped the run (SIGTERM, say)
    memory_estimate_bytes: int | None = later()  # the peak expected before training
    memory_available_bytes: int | None = later()  # what the device had free for it then
    error: str | None = later()  # a failed run's error, in one line, and its traceback
    traceback: str | None = later()
    # a pipelined run's workers
    pipeline_workers: list[dict[str, Any]] | None = later()
    pipeline_staleness_bound: int | None = later()
    pipeline_staleness_max: list[int] | None = later()
    pipeline_peak_memory_bytes: list[int] | None = later()

    def update(self, values: dict[str, Any]) -> None:
        """Set fields by name; a name that is not a field is an error (no silent new key)."""
        for name, value in values.items():
            if name not in _NAMES:
                raise KeyError(f"summary.json has no field {name!r}")
            setattr(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """What summary.json holds: every field, but the `later` ones only once they are set."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if not (f.metadata.get("later") and getattr(self, f.name) is None)
        }


_NAMES = {f.name for f in fields(Summary)}
