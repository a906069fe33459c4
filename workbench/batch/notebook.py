"""The batch notebook's library side: its parameters cell, its config, its progress and results.

`notebooks/experiment.ipynb` is a thin papermill notebook: one parameter per Config field (same
names, same defaults) plus `live` and `out_dir`. The parameters cell is generated here from
`config_fields()`, so the notebook cannot drift from the Config; after changing Config, run

    python -m workbench.batch.notebook

to rewrite the committed cell (tests/test_notebooks.py fails until you do).

The cell's first statement notes the names defined before the parameters; `experiment_config`
then refuses any other new name that is not a parameter (papermill's `-p epoch 1` for
`epochs` would otherwise run with the default), naming the nearest parameter.
"""

from __future__ import annotations

import difflib
import inspect
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workbench import config as config_module
from workbench.config import Config, ConfigError, config_fields

EXPERIMENT_NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "experiment.ipynb"

# The notebook's own parameters beside the Config fields: (name, type, default, help).
NOTEBOOK_PARAMETERS: tuple[tuple[str, str, Any, str], ...] = (
    ("live", "bool", False, "live plotly widgets while training; False: static figures only"),
    ("out_dir", "str", "", "the run folder; overrides out when set (the sweep sets it)"),
)
# The global the parameters cell records the names defined before it in; one '=' and no
# `name =` at its start, so papermill does not take the line for a parameter.
NAMES_BEFORE = "_names_before_parameters"
SNAPSHOT_LINE = f"globals().update({NAMES_BEFORE}=set(globals()))  # unknown parameters: refused"


class ParameterError(ConfigError):
    """A bad notebook parameter: shown by the notebook as this one line, with no traceback."""

    def _render_traceback_(self) -> list[str]:  # IPython's hook for an exception's display
        return [f"{type(self).__name__}: {self}"]


def field_comments() -> dict[str, str]:
    """The trailing comment of each field in Config's source: the fields' one documentation."""
    comments = {}
    for line in inspect.getsource(Config).splitlines():
        match = re.match(r"\s+(\w+): [\w\[\], |]+ = .*?  # (.*)$", line)
        if match:
            comments[match.group(1)] = match.group(2).strip()
    return comments


# Help for the fields whose source line carries no comment.
_MORE_HELP = {
    "arch": "greedy-cnn, resnet20/32/56/110, resnet18, vgg11 or vgg13",
    "method": "sequential, parallel (DGL), multilap (TRGL laps) or end-to-end",
    "batch_size": "training minibatch size",
    "lr": "SGD learning rate at the start of each module's schedule",
    "lr_schedule": "per module: constant, step (see lr_step, lr_decay) or cosine",
    "lr_decay": "step schedule: the factor applied every lr_step epochs",
    "momentum": "SGD momentum",
    "weight_decay": "SGD weight decay",
    "label_smoothing": "cross-entropy label smoothing, from 0 up to (not including) 1",
    "device": "auto picks the GPU when there is one",
    "seed": "seed of the initialisation, the data order and the subsets",
}


LINE_LENGTH = 100  # the project's ruff line length: the parameters cell is linted too


def field_help(name: str, room: int = LINE_LENGTH) -> str:
    """One line of help for a Config field, at most `room` characters, safe for papermill.

    papermill skips a parameter line holding more than one '=', so '=' in the source comment is
    written as ':' here. Choice fields name their allowed values when the line has room.
    """
    comment = field_comments().get(name) or _MORE_HELP.get(name, "")
    comment = re.sub(r"^one of [A-Z_]+;\s*", "", comment)  # the list itself is named below
    comment = comment.replace(" = ", ": ").replace("=", ":")
    candidates = [comment]
    choices = config_module.FIELD_CHOICES.get(name)
    if choices and not all(c in comment for c in choices):
        listed = f"one of {', '.join(choices)}"
        candidates = [f"{listed}; {comment}" if comment else listed, listed, comment]
    fitting = [c for c in candidates if c and len(c) <= room]
    return fitting[0] if fitting else (comment or name.replace("_", " "))[:room]


def _literal(value: Any) -> str:
    """A default as Python source, strings in double quotes (ruff format's style)."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _parameter_line(name: str, kind: str, default: Any, text: str | None = None) -> str:
    head = f"{name}: {kind} = {_literal(default)}  # "
    return head + (text if text is not None else field_help(name, LINE_LENGTH - len(head)))


def parameters_source() -> str:
    """The experiment notebook's `parameters` cell: `name: type = default  # help` per line."""
    lines = [
        "# Parameters: one per workbench.Config field (same names and defaults), then the",
        "# notebook's own. Generated by workbench.batch.notebook.parameters_source().",
        SNAPSHOT_LINE,
    ]
    lines += [_parameter_line(f.name, str(f.type), f.default) for f in config_fields()]
    lines += [_parameter_line(*parameter) for parameter in NOTEBOOK_PARAMETERS]
    return "\n".join(lines)


def update_parameters_cell(notebook_path: str | Path = EXPERIMENT_NOTEBOOK) -> bool:
    """Rewrite the notebook's `parameters` cell from Config; returns whether it changed."""
    import nbformat

    path = Path(notebook_path)
    nb = nbformat.read(path, as_version=4)
    cell = parameters_cell(nb)
    new = parameters_source()
    if cell.source == new:
        return False
    cell.source = new
    nbformat.write(nb, path)
    return True


def parameters_cell(nb: Any) -> Any:
    """The one cell tagged `parameters` of a notebook (nbformat node)."""
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"expected one cell tagged 'parameters', found {len(cells)}")
    return cells[0]


def parameter_names() -> list[str]:
    """The batch notebook's parameters: the Config fields, then its own."""
    return [f.name for f in config_fields()] + [name for name, *_ in NOTEBOOK_PARAMETERS]


def unknown_parameters(namespace: dict[str, Any]) -> list[str]:
    """Names given to the notebook (papermill's injected cell) that are not parameters: the
    plain values defined since the parameters cell's first line. Checked once per run of that
    cell (the record is consumed), so re-running later cells by hand never trips on it."""
    before = namespace.pop(NAMES_BEFORE, None)
    if before is None:
        return []
    known = set(parameter_names())
    return [
        name
        for name, value in namespace.items()
        if name not in before
        and name not in known
        and not name.startswith("_")
        and not callable(value)  # this cell's own imports
        and not inspect.ismodule(value)
    ]


def experiment_config(namespace: dict[str, Any]) -> Config:
    """The Config from the notebook's parameters (its globals): the fields, `out_dir` on `out`.

    A bad value, or a name that is no parameter, is a ParameterError: one line in the notebook.
    """
    unknown = unknown_parameters(namespace)
    if unknown:
        name = unknown[0]
        near = difflib.get_close_matches(name, parameter_names(), n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ParameterError(
            f"{name}: got {namespace[name]!r}, but the notebook has no parameter {name!r}{hint}; "
            "allowed: the Config fields, live and out_dir"
        )
    values = {f.name: namespace[f.name] for f in config_fields() if f.name in namespace}
    if namespace.get("out_dir"):
        values["out"] = str(namespace["out_dir"])
    try:
        return Config.from_dict(values)
    except ConfigError as e:
        raise ParameterError(str(e)) from None


def describe_kernel() -> str:
    """Which Python runs the notebook: papermill's `python3` kernel should be the venv's."""
    return f"python {sys.executable} ({sys.version.split()[0]}), environment {sys.prefix}"


class EpochPrinter:
    """A plain-text progress callback: one short line per epoch, nothing stored as a widget.

    Under papermill a tqdm bar becomes an ipywidget (state saved in the output notebook) or a
    stream of carriage returns; one line per epoch keeps the output notebook small and readable.
    """

    def __init__(self, every_epoch: bool = True):
        self.every_epoch = every_epoch  # False: the start line and one line per module

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        from workbench.events import EPOCH_END, ESTIMATE, MODULE_DONE, RUN_START, describe_estimate

        if event == RUN_START:
            done = info["epochs_done"]
            resumed = f", resuming after {done} epochs" if done else ""
            print(
                f"run {info['run_dir']} on {info['device']}: {info['method']}, "
                f"{info['n_modules']} modules, {info['total_epochs']} epochs{resumed}",
                flush=True,
            )
        elif event == EPOCH_END and self.every_epoch:
            accs = ", ".join(f"{k}: {a:.3f}" for k, a in sorted(info["test_acc"].items()))
            print(
                f"epoch {info['global_epoch']}: modules {info['modules']} trained; "
                f"test acc by module {{{accs}}}; {info['images_per_s']:.0f} img/s",
                flush=True,
            )
        elif event == ESTIMATE:
            print(describe_estimate(info), flush=True)
        elif event == MODULE_DONE and info.get("test_acc") is not None:
            print(f"module {info['module']} done: test acc {info['test_acc']:.4f}", flush=True)


def report_run(summary: Mapping[str, Any], show: bool = True, png: bool = True) -> list[Path]:
    """Print the per-module table, write the run's figures into `<run>/figures/` and show them.

    The figures are displayed with plotly's `plotly_mimetype` renderer: the figure's JSON only
    (a few kB), interactive in JupyterLab, never the 4 MB plotly.js bundle nor a FigureWidget.
    Returns the files written (HTML always, PNG where kaleido finds a browser).
    """
    from workbench.records import format_results
    from workbench.ui.plots import run_figures, save_figures

    print(format_results(dict(summary)))
    run_dir = Path(summary["run_dir"])
    figures = run_figures(run_dir)
    written = save_figures(figures, run_dir / "figures", png=png)
    print("figures: " + ", ".join(str(p) for p in written))
    if show:
        for fig in figures.values():
            fig.show(renderer="plotly_mimetype")
    return written


def main() -> int:
    """Rewrite the experiment notebook's parameters cell from Config (after Config changes)."""
    changed = update_parameters_cell()
    print(f"{EXPERIMENT_NOTEBOOK}: parameters cell {'rewritten' if changed else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
