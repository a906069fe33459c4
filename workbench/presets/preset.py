"""What a preset is: config values, and the paper's number they train toward."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workbench.config import FIELD_INFO, Config

# fields that do not change the experiment: where and how fast it runs, what else it records
NON_EXPERIMENT_FIELDS = tuple(name for name, info in FIELD_INFO.items() if not info.experiment)


@dataclass(frozen=True)
class Preset:
    """A set of config values, and what the paper reports for it (None: no number quoted)."""

    description: str
    values: dict[str, Any] = field(default_factory=dict)
    paper_number: float | None = None  # percent, top-1
    metric: str = "final_test_acc"  # the summary.json field the number compares with
    reference: str = ""  # the reference code's command behind the number

    def config(self, **overrides: Any) -> Config:
        return Config.from_dict({**self.values, **overrides})
