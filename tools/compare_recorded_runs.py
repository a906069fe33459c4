"""Compare two recordings of the test suite's runs (tests/conftest.py, WORKBENCH_RECORD_RUNS):
every run folder both hold must have the same per-module accuracies and metrics rows, bit for
bit. A refactor records before and after and runs this:

    WORKBENCH_RECORD_RUNS=/tmp/before.json pytest -q   # on the commit before
    WORKBENCH_RECORD_RUNS=/tmp/after.json pytest -q    # after
    python tools/compare_recorded_runs.py /tmp/before.json /tmp/after.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

TIME = re.compile(r"\d{8}-\d{6}")  # a default run folder's start time (runs/<time>-<arch>-...)


def by_place(runs: dict[str, dict]) -> dict[str, dict]:
    """The runs keyed by where they sit: a start time in a folder's name is replaced by the
    folder's rank among its time-named siblings, so two sessions' runs line up."""
    keyed: dict[str, dict] = {}
    seen: dict[str, int] = {}
    for name in sorted(runs):
        pattern = TIME.sub("<time>", name)
        if pattern == name:
            keyed[name] = runs[name]
            continue
        seen[pattern] = seen.get(pattern, -1) + 1
        keyed[pattern.replace("<time>", f"<time {seen[pattern]}>")] = runs[name]
    return keyed


def main(before_path: str, after_path: str) -> int:
    before = by_place(json.loads(Path(before_path).read_text()))
    after = by_place(json.loads(Path(after_path).read_text()))
    common = sorted(set(before) & set(after))
    differ = [name for name in common if before[name] != after[name]]
    for name in differ:
        print(f"differs: {name}")
        print(f"  before: {before[name]['per_module_test_acc']} ({before[name]['status']})")
        print(f"  after:  {after[name]['per_module_test_acc']} ({after[name]['status']})")
    only = sorted(set(before) ^ set(after))
    for name in only:
        print(f"only in {'before' if name in before else 'after'}: {name}")
    rows = sum(len(before[name]["rows"]) for name in common)
    print(
        f"{len(common)} runs in both ({rows} metrics rows): {len(common) - len(differ)} equal "
        f"bit for bit, {len(differ)} differ; {len(only)} in one recording only"
    )
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
