"""One verdict of the doctor: a check that passed or failed, and why, in one line."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Check:
    """A pass/fail verdict; `reason` is one line saying what was measured or what went wrong."""

    name: str
    passed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """The check as the report prints it."""
        return f"{'pass' if self.passed else 'FAIL'}  {self.name}: {self.reason}"


def one_line(error: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
