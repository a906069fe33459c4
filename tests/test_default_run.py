"""README command 1's experiment, as a user runs it: the installed `workbench run`, no arguments."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path


def test_default_run_learns_offline_and_prints_the_per_module_table(tmp_path):
    script = shutil.which("workbench", path=str(Path(sys.executable).parent))
    assert script, "the console script `workbench` is not installed beside this Python"
    result = subprocess.run(
        [script, "run"], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = re.findall(r"^\s+(\d)\s+(0\.\d+)$", result.stdout, flags=re.M)
    accs = [float(a) for _, a in rows]
    assert [int(k) for k, _ in rows] == [1, 2, 3, 4]
    assert accs[-1] > 0.9  # ten classes: chance is 0.1
    assert accs[-1] > accs[0]  # deeper modules do better
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert len(summary["per_module_test_acc"]) == 4
    assert all(abs(a - b) < 1e-4 for a, b in zip(summary["per_module_test_acc"], accs))
    assert summary["data"]["copy"] == "embedded" and summary["data"]["n_train"] == 4000
