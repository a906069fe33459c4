"""The batch, comparison and teaching notebooks, executed for real by papermill with tiny runs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest

from workbench.batch.notebook import EXPERIMENT_NOTEBOOK, parameters_cell, parameters_source
from workbench.config import DEFAULTS, config_fields
from workbench.ui.plotly_js import PLOTLY_JS

NOTEBOOKS = EXPERIMENT_NOTEBOOK.parent
OWNED = [
    "experiment.ipynb",
    "compare.ipynb",
    "greedy_layerwise.ipynb",
    "why_layerwise_fails_to_scale.ipynb",
    "kinetic_regularization.ipynb",
    "local_objectives.ipynb",
    "what_is_local_learning.ipynb",
]
PAPERMILL = str(Path(sys.executable).parent / "papermill")
TINY = {"n_train": 200, "n_test": 100, "epochs": 1, "width": 4, "device": "cpu"}


def run_papermill(notebook: Path, output: Path, parameters: dict, cwd: Path) -> None:
    """The papermill command line, as a user runs it (-y takes lists and typed values)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a shared 2-core machine: no oversubscription
    result = subprocess.run(
        [PAPERMILL, str(notebook), str(output), "-y", json.dumps(parameters), "--no-progress-bar"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def outputs_text(nb_path: Path) -> str:
    nb = nbformat.read(nb_path, as_version=4)
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", "") + json.dumps(out.get("data", {})))
    return "\n".join(texts)


# -- the committed notebooks -------------------------------------------------------------------
@pytest.mark.parametrize("name", OWNED)
def test_notebook_is_committed_clean_with_a_parameters_cell(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip the outputs"
    parameters_cell(nb)  # exactly one cell tagged `parameters`, or ValueError
    assert papermill.inspect_notebook(str(NOTEBOOKS / name)), "no parameters papermill can read"


def test_experiment_parameters_are_config_fields_with_their_defaults():
    nb = nbformat.read(EXPERIMENT_NOTEBOOK, as_version=4)
    source = parameters_cell(nb).source
    assert source == parameters_source(), "regenerate it: python -m workbench.batch.notebook"
    namespace: dict = {}
    exec(source, namespace)  # the values the notebook really starts with
    for f in config_fields():
        value = namespace[f.name]
        assert value == DEFAULTS[f.name] and type(value) is type(DEFAULTS[f.name]), f.name
    assert namespace["live"] is False and namespace["out_dir"] == ""
    inferred = papermill.inspect_notebook(str(EXPERIMENT_NOTEBOOK))
    assert list(inferred) == [f.name for f in config_fields()] + ["live", "out_dir"]
    for f in config_fields():
        assert inferred[f.name]["inferred_type_name"] == f.type, f.name
        assert inferred[f.name]["help"], f"{f.name} has no help text"


def test_papermill_help_notebook_documents_every_field():
    result = subprocess.run(
        [PAPERMILL, "--help-notebook", str(EXPERIMENT_NOTEBOOK)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for f in config_fields():
        assert f"  {f.name}: {f.type} (default " in result.stdout, f.name
    assert "  live: bool (default False)" in result.stdout
    assert "  out_dir: str" in result.stdout


# -- executed ----------------------------------------------------------------------------------
def test_experiment_notebook_trains_saves_figures_and_stays_small(tmp_path):
    output = tmp_path / "experiment.ipynb"
    run_papermill(
        EXPERIMENT_NOTEBOOK,
        output,
        {**TINY, "n_modules": 2, "live": False, "out_dir": "run"},  # relative to papermill's cwd
        cwd=tmp_path,
    )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert len(summary["per_module_test_acc"]) == 2
    assert summary["data"]["n_train"] == 200
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["width"] == 4 and config["out"] == "run"
    figures = tmp_path / "run" / "figures"
    for stem in ("accuracy", "depth", "loss"):
        assert (figures / f"{stem}.html").stat().st_size > 1000
    # plotly.js once, beside the run folder (for the runs beside it), not inside it
    assert [p.name for p in tmp_path.rglob("plotly*.js")] == [PLOTLY_JS]
    assert (tmp_path / PLOTLY_JS).is_file()
    # the output notebook: figures as small JSON, no widget and no embedded plotly.js
    size = output.stat().st_size
    assert size < 1_000_000, f"output notebook is {size} bytes"
    nb = nbformat.read(output, as_version=4)
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    models = [(m["model_module"], m["model_name"]) for m in state.get("state", {}).values()]
    assert not [m for m in models if m[0] == "anywidget" or "Figure" in m[1]], models
    text = outputs_text(output)
    assert "application/vnd.jupyter.widget-view+json" not in text
    assert "application/vnd.plotly.v1+json" in text
    # papermill's python3 kernel runs in this environment (the venv), not some other Python
    assert f"environment {sys.prefix}\n" in text
    assert "module 2 done: test acc" in text


TEACHING = {  # name: (tiny parameters, runs' modules per seed (a run each), probes)
    "greedy_layerwise.ipynb": ({"n_modules": 2, "budget_minutes": 0.1}, [2, 2, 2], False),
    # end to end and K=2 have 2 modules; K=n_units and its accelerated twin have 3. Every
    # notebook's size chooser gets a tiny budget (its smallest size); TINY overrides it anyway
    "why_layerwise_fails_to_scale.ipynb": (
        {"n_units": 3, "budget_minutes": 0.1},
        [2, 2, 3, 3],
        True,
    ),
    "kinetic_regularization.ipynb": (
        {"n_units": 3, "taus": [1.0], "budget_minutes": 0.1},
        [3, 3],
        False,
    ),
    # six variants (end to end, greedy, InfoPro x 2, PredSim, kinetic), each in 2 modules
    "local_objectives.ipynb": (
        {"n_units": 3, "n_modules": 2, "budget_minutes": 0.1},
        [2] * 6,
        False,
    ),
}


@pytest.mark.parametrize("name", list(TEACHING))
def test_teaching_notebook_runs_its_variants_with_tiny_parameters(tmp_path, name):
    """Each teaching notebook runs headless with tiny parameters and writes its tidy
    results.csv (variant, seed, module, test_acc: one row per run and module)."""
    extra, modules, probes = TEACHING[name]
    output = tmp_path / name
    parameters = {
        **TINY,
        "dataset": "mnist-5k",
        **extra,
        "seeds": [0, 1],
        "out_dir": "lesson",
        "data_dir": "data",
    }
    run_papermill(NOTEBOOKS / name, output, parameters, tmp_path)
    lesson = tmp_path / "lesson"
    with open(lesson / "results.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames[:4] == ["variant", "seed", "module", "test_acc"]
        rows = list(reader)
    assert len(rows) == 2 * sum(modules)  # every variant, seed and module
    assert {r["seed"] for r in rows} == {"0", "1"}
    assert all(0 <= float(r["test_acc"]) <= 1 for r in rows)
    assert ("probe_acc" in rows[0]) == probes
    with open(lesson / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == sum(modules) and "test_acc_sd" in summary[0]
    assert (lesson / "depth.html").is_file()
    assert (lesson / "separability.html").is_file() == probes
    if name == "local_objectives.ipynb":  # each variant's training peak, as the bench measures
        with open(lesson / "memory.csv") as f:
            memory = list(csv.DictReader(f))
        assert [r["variant"] for r in memory][:2] == ["end to end", "greedy cross-entropy"]
        assert len(memory) == 6 and all(int(r["peak_bytes"]) > 0 for r in memory)
    text = outputs_text(output)
    assert "not shown: fewer than 3 seeds" in text  # the verdicts are printed, honestly
    assert output.stat().st_size < 1_000_000


# -- compare.ipynb -----------------------------------------------------------------------------
def output_errors(nb_path: Path) -> list[str]:
    nb = nbformat.read(nb_path, as_version=4)
    return [
        f"{out['ename']}: {out['evalue']}"
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]


def test_compare_notebook_as_shipped_without_runs_says_what_to_pass(tmp_path):
    output = tmp_path / "compare.ipynb"
    run_papermill(NOTEBOOKS / "compare.ipynb", output, {}, cwd=tmp_path)  # no runs/ here
    text = outputs_text(output)
    assert "Nothing to compare: runs: no such folder" in text
    assert "sweep_dir " in text and "run_dirs " in text and "papermill notebooks/compare" in text
    assert "nothing to save" in text
    assert output_errors(output) == [] and "Traceback" not in text
    assert not (tmp_path / "runs").exists()


def test_compare_notebook_over_runs_labels_them_and_draws_epochs_and_depth(tmp_path):
    from conftest import tiny

    from workbench import run_experiment
    from workbench.runs import run_labels

    configs = []
    for name, aux_depth in (("k1", 1), ("k3", 3)):  # also differing in a field labels skip
        config = tiny(
            tmp_path,
            n_modules=2,
            aux_depth=aux_depth,
            allow_modified_copy=aux_depth == 3,
            out=f"{tmp_path}/runs/{name}",
        )
        assert run_experiment(config)["status"] == "finished"
        configs.append(config.to_dict())
    output = tmp_path / "compare.ipynb"
    # the default: runs/; no PNGs (kaleido's browser start), the sweep's test writes them
    run_papermill(NOTEBOOKS / "compare.ipynb", output, {"png": False}, cwd=tmp_path)
    assert output_errors(output) == []
    labels = run_labels(configs)
    assert labels == ["aux_depth=1", "aux_depth=3"]
    saved = tmp_path / "runs" / "comparison"
    with open(saved / "comparison.csv") as f:
        assert [row["label"] for row in csv.DictReader(f)] == labels
    text = outputs_text(output)
    for title in (
        "Test accuracy of the last module per epoch",
        "Training loss of the last module per epoch",
        "Test accuracy against depth",
    ):
        assert title in text, title
    for stem in ("accuracy", "loss", "depth"):
        html = (saved / f"{stem}.html").read_text()
        assert all(label in html for label in labels), stem
    assert "allow_modified_copy" not in text  # neither a label nor a column
    assert output.stat().st_size < 1_000_000


def test_compare_notebook_over_runs_with_an_unreadable_one_compares_the_rest(tmp_path):
    import shutil

    from conftest import tiny

    from workbench import run_experiment

    assert run_experiment(tiny(tmp_path, out=f"{tmp_path}/runs/k1"))["status"] == "finished"
    shutil.copytree(tmp_path / "runs" / "k1", tmp_path / "runs" / "bad")
    (tmp_path / "runs" / "bad" / "config.json").write_text('{"arch": "greedy-cnn", "met')
    output = tmp_path / "compare.ipynb"
    run_papermill(NOTEBOOKS / "compare.ipynb", output, {"png": False}, cwd=tmp_path)
    assert output_errors(output) == [] and "Traceback" not in outputs_text(output)
    reason = "config.json: not valid JSON (Unterminated string starting at: line 1 column 24)"
    saved = tmp_path / "runs" / "comparison"
    with open(saved / "comparison.csv") as f:
        rows = [(r["label"], r["status"], r["error"]) for r in csv.DictReader(f)]
    assert rows == [("bad", "unreadable", reason), ("greedy-cnn sequential", "finished", "")]
    text = outputs_text(output)  # the displayed table cuts long cells: printed in full too
    assert f"1 of 2 run folders cannot be read, left out of figures:\n  runs/bad: {reason}" in text
    assert "greedy-cnn sequential" in (saved / "depth.html").read_text()


def test_what_is_local_learning_shows_each_piece_with_tiny_parameters(tmp_path):
    """The first notebook a class opens: gradients stop at module boundaries, memory against
    depth, psi's exact inverse on a real image, the blocks' kinetic energy with and without
    the term; it writes results.csv, energies.csv and memory.csv."""
    output = tmp_path / "what.ipynb"
    parameters = {"dataset": "mnist-5k", "n_train": 200, "n_test": 100, "n_units": 3,
                  "width": 4, "depths": [3, 6], "epochs": [1], "seeds": [0, 1],
                  "out_dir": "lesson", "device": "cpu"}  # fmt: skip
    run_papermill(NOTEBOOKS / "what_is_local_learning.ipynb", output, parameters, tmp_path)
    text = outputs_text(output)
    assert "the inverse gives the image back exactly: True" in text
    assert "layer-wise" in text and "[1, 2, 3]" in text  # end to end reaches every module
    assert output_errors(output) == []
    lesson = tmp_path / "lesson"
    with open(lesson / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 2 * 2 * 3  # 2 variants x 2 seeds x 3 modules
    with open(lesson / "energies.csv") as f:
        energies = list(csv.DictReader(f))
    assert len(energies) == 2 * 2 * 3 and all(float(r["energy"]) > 0 for r in energies)
    with open(lesson / "memory.csv") as f:
        assert [r["blocks"] for r in csv.DictReader(f)] == ["3", "6"]
    assert "not shown: fewer than 3 seeds" in text  # the energy claim, honestly
