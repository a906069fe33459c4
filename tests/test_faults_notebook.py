"""The batch notebook refuses a parameter it does not have (`-p epoch 1` for `epochs`) in one
line naming the nearest one, instead of running with the default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from workbench.batch.notebook import (
    EXPERIMENT_NOTEBOOK,
    ParameterError,
    experiment_config,
    parameters_source,
)

PAPERMILL = str(Path(sys.executable).parent / "papermill")


def test_papermill_with_an_unknown_parameter_fails_naming_the_nearest(tmp_path):
    result = subprocess.run(
        [PAPERMILL, str(EXPERIMENT_NOTEBOOK), "out.ipynb", "-p", "epoch", "1",
         "-p", "out_dir", "run", "--no-progress-bar"],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    expected = (
        "ParameterError: epoch: got 1, but the notebook has no parameter 'epoch' (did you mean "
        "epochs?); allowed: the Config fields, live and out_dir"
    )
    assert expected in result.stderr
    assert not (tmp_path / "run").exists()  # nothing ran with the default epochs
    errors = [
        out
        for cell in nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert [e["traceback"] for e in errors] == [[expected]]  # one line, no traceback


def namespace(**injected: object) -> dict:
    """The kernel's globals after the parameters cell and papermill's injected cell."""
    ns: dict = {"In": [], "Out": {}, "get_ipython": print}  # what IPython defines before
    exec(parameters_source(), ns)
    ns.update(injected)
    ns["experiment_config"] = experiment_config  # the next cell's own import
    return ns


def test_known_parameters_pass_and_values_are_still_checked():
    assert experiment_config(namespace(epochs=1, out_dir="x")).epochs == 1
    with pytest.raises(ParameterError, match="^aux_depth: got 9; allowed: 0 to 4$"):
        experiment_config(namespace(aux_depth=9))
    with pytest.raises(ParameterError, match=r"^lrr: got 0.1, .*\(did you mean lr\?\)"):
        experiment_config(namespace(lrr=0.1))


def test_the_check_runs_once_per_parameters_cell():
    ns = namespace(epoch=1)
    with pytest.raises(ParameterError):
        experiment_config(ns)
    ns["summary"] = {"status": "finished"}  # later cells, run again by hand
    assert experiment_config(ns).epochs == 3
