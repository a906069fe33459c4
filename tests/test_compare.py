"""Runs side by side (workbench.batch.compare) and the figures' one shared plotly.js, on two real
tiny runs that differ in aux depth (and in fields that must not label them)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import pytest
from conftest import tiny

from workbench import run_experiment
from workbench.batch.compare import HOW_TO_POINT, RunsNotFound, compare, read_csv
from workbench.records import read_metrics
from workbench.runs import run_labels
from workbench.ui.plotly_js import PLOTLY_JS, write_shared_plotly_js
from workbench.ui.plots import run_figures, save_figures

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCRIPT_SRC = re.compile(r'<script charset="utf-8" src="([^"]+)"></script>')


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """root/runs/k1 and root/runs/k2: 2 modules, 2 epochs, aux depth 1 and 2; they also differ
    in eval_batch_size and allow_modified_copy, which say nothing about the result."""
    root = tmp_path_factory.mktemp("compare")
    for name, aux_depth, eval_batch_size in (("k1", 1, 0), ("k2", 2, 50)):
        config = tiny(
            root,
            n_modules=2,
            epochs=2,
            aux_depth=aux_depth,
            eval_batch_size=eval_batch_size,
            allow_modified_copy=aux_depth == 2,
            out=str(root / "runs" / name),
        )
        assert run_experiment(config)["status"] == "finished"
    return root


def configs(root: Path) -> list[dict]:
    return [json.loads((root / "runs" / n / "config.json").read_text()) for n in ("k1", "k2")]


def script_src(html: Path) -> Path:
    """The file the HTML's plotly <script src> points at (relative to the HTML)."""
    (src,) = SCRIPT_SRC.findall(html.read_text())
    return html.parent / unquote(src)


def test_runs_are_labelled_by_what_differs_and_drawn_per_epoch_and_depth(root):
    comparison = compare(root / "runs")
    labels = [row["label"] for row in comparison.rows]
    assert labels == run_labels(configs(root)) == ["aux_depth=1", "aux_depth=2"]
    assert comparison.rows[0]["aux_depth"] == 1  # the table's columns: what differs, and
    assert not {"eval_batch_size", "allow_modified_copy", "out"} & set(comparison.rows[0])
    assert comparison.save_to == root / "runs" / "comparison"
    figures = comparison.figures
    assert list(figures) == ["accuracy", "loss", "depth"]  # no probes recorded: no separability
    for name in ("k1", "k2"):
        summary = json.loads((root / "runs" / name / "summary.json").read_text())
        label = labels[["k1", "k2"].index(name)]
        rows = read_metrics(root / "runs" / name)
        last_test = [r["acc"] for r in rows if r["split"] == "test" and r["module"] == 2]
        last_loss = [r["loss"] for r in rows if r["split"] == "train" and r["module"] == 2]
        (acc,) = [t for t in figures["accuracy"].data if t.name == label]
        (loss,) = [t for t in figures["loss"].data if t.name == label]
        (depth,) = [t for t in figures["depth"].data if t.name == label]
        assert list(acc.x) == [1, 2] and list(acc.y) == pytest.approx(last_test)
        assert list(loss.x) == [1, 2] and list(loss.y) == pytest.approx(last_loss)
        assert list(depth.y) == pytest.approx(summary["per_module_test_acc"])
        assert acc.line.color == loss.line.color == depth.line.color  # a run keeps its colour
        assert max(last_test) > 0.3  # learning happened (10 classes: chance is 0.1)
    assert figures["accuracy"].data[0].line.color != figures["accuracy"].data[1].line.color
    low, high = figures["accuracy"].layout.yaxis.range
    assert high - low < 1  # fitted to the data, not 0-1
    written = comparison.save(png=False)
    assert [p.name for p in written] == [
        "comparison.csv",
        "accuracy.html",
        "loss.html",
        "depth.html",
    ]
    # plotly.js in the folder holding the runs, for them to share too: not in the comparison
    assert sorted(root.rglob("plotly*.js")) == [root / "runs" / PLOTLY_JS]
    assert script_src(written[-1]) == root / "runs" / "comparison" / f"../{PLOTLY_JS}"


def test_globs_run_folders_and_nothing_found_explained(root, tmp_path, capsys):
    both = compare([str(root / "runs" / "k*")])
    assert [r["label"] for r in both.rows] == ["aux_depth=1", "aux_depth=2"]
    one = compare([root / "runs" / "k2"])
    assert [r["label"] for r in one.rows] == ["greedy-cnn sequential"]  # lone: arch, method
    with pytest.raises(RunsNotFound, match=r"^.*missing: no such folder$"):
        compare(tmp_path / "missing")
    with pytest.raises(RunsNotFound, match="no folder matches this pattern"):
        compare(str(tmp_path / "nothing-*"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunsNotFound, match="no run folders .* in .*empty$"):
        compare(tmp_path / "empty")
    empty = compare(tmp_path / "missing", explain=True)
    out = capsys.readouterr().out
    assert out.startswith("Nothing to compare: ") and HOW_TO_POINT in out
    assert empty.rows == [] and empty.frame() is None and empty.save(tmp_path / "x") == []
    assert not (tmp_path / "x").exists()


# (the file spoiled in a copy of k2, what it then holds, the reason its row gives)
SPOILED = [
    ("config.json", b'{"arch": "greedy-cnn", ', "config.json: not valid JSON (Expecting property "
     "name enclosed in double quotes: line 1 column 24)"),
    ("config.json", b"\xff\xfe{}", "config.json: not UTF-8 text (invalid start byte at byte 0)"),
    ("summary.json", b"[0.5, 0.6]", "summary.json: holds an array, not a JSON object"),
    ("metrics.jsonl", b"not json\n", "metrics.jsonl: not valid JSON (Expecting value: line "
     "{line} column 1)"),  # appended after the run's rows
]  # fmt: skip


def runs_with_a_spoiled_copy(root: Path, tmp_path: Path, name: str, data: bytes) -> tuple:
    """tmp_path/runs holding k1, k2 and bad (k2's copy with `name` spoiled), and the line
    `data` went to when appended to metrics.jsonl."""
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs, ignore=shutil.ignore_patterns("comparison", "plotly*"))
    shutil.copytree(runs / "k2", runs / "bad")
    path = runs / "bad" / name
    before = path.read_bytes() if name == "metrics.jsonl" else b""
    path.write_bytes(before + data)
    return runs, len(before.splitlines()) + 1


@pytest.mark.parametrize("name, data, reason", SPOILED, ids=[r[2][:20] for r in SPOILED])
def test_an_unreadable_run_is_a_row_saying_why_and_the_others_compare_and_draw(
    root, tmp_path, name, data, reason
):
    runs, line = runs_with_a_spoiled_copy(root, tmp_path, name, data)
    comparison = compare(runs)
    bad, *good = comparison.rows  # sorted by folder: bad, k1, k2
    # the labels are the two readable runs' own: the copy of k2 does not tie with k2
    assert [r["label"] for r in comparison.rows] == ["bad", *run_labels(configs(root))]
    assert bad["status"] == "unreadable" and bad["error"] == reason.format(line=line)
    assert bad["aux_depth"] is bad["acc_module_1"] is bad["final_test_acc"] is None
    for row, folder in zip(good, ("k1", "k2")):
        summary = json.loads((root / "runs" / folder / "summary.json").read_text())
        assert row["status"] == "finished" and row["error"] == ""
        assert [row["acc_module_1"], row["acc_module_2"]] == summary["per_module_test_acc"]
        assert row["final_test_acc"] == summary["final_test_acc"]
        assert row["aux_depth"] == int(folder[1])
    for figure in ("accuracy", "loss", "depth"):  # drawn from the readable runs alone
        assert [t.name for t in comparison.figures[figure].data] == ["aux_depth=1", "aux_depth=2"]
    written = comparison.save(tmp_path / "saved", png=False)
    names = [p.name for p in written]
    assert names == ["comparison.csv", "accuracy.html", "loss.html", "depth.html"]
    table = read_csv(written[0])
    assert [(r["label"], r["status"]) for r in table] == [
        ("bad", "unreadable"), ("aux_depth=1", "finished"), ("aux_depth=2", "finished")
    ]  # fmt: skip
    assert table[0]["error"] == reason.format(line=line) and table[0]["acc_module_1"] == ""
    assert comparison.frame().shape[0] == 3


def test_when_no_run_can_be_read_the_table_says_why_and_nothing_is_drawn(root, tmp_path, capsys):
    runs, _ = runs_with_a_spoiled_copy(root, tmp_path, "config.json", b"")
    shutil.rmtree(runs / "k1")
    shutil.rmtree(runs / "k2")
    comparison = compare(runs)
    [row] = comparison.rows
    assert row["status"] == "unreadable"
    assert row["error"] == "config.json: not valid JSON (Expecting value: line 1 column 1)"
    assert comparison.figures == {}
    comparison.show()
    assert capsys.readouterr().out == (
        "Nothing to draw: the 1 run folder(s) found cannot be read; the error column says why\n"
    )
    assert [p.name for p in comparison.save(png=False)] == ["comparison.csv"]


def test_figures_of_two_runs_share_one_plotly_js_that_moves_with_the_root(root, tmp_path):
    tree = tmp_path / "tree"
    skip = shutil.ignore_patterns("comparison", "plotly*.js")
    shutil.copytree(root / "runs", tree / "runs", ignore=skip)
    for name in ("k1", "k2"):
        folder = tree / "runs" / name / "figures"
        written = save_figures(run_figures(tree / "runs" / name), folder, png=False)
        assert [p.name for p in written if p.suffix == ".html"] == [
            "accuracy.html",
            "depth.html",
            "loss.html",
        ]
    assert sorted(tree.rglob("plotly*.js")) == [tree / "runs" / PLOTLY_JS]
    moved = shutil.move(tree, tmp_path / "elsewhere")  # the whole root, moved
    for html in Path(moved).rglob("*.html"):
        assert script_src(html).resolve() == (Path(moved) / "runs" / PLOTLY_JS).resolve()
        assert html.stat().st_size < 200_000  # the figure, not plotly.js's 4.8 MB
    assert (Path(moved) / "runs" / PLOTLY_JS).stat().st_size > 1_000_000

    # a sweep writes DIR's copy first; its points' run folders (DIR/<point>/run) use it
    sweep = tmp_path / "sweep"
    shared = write_shared_plotly_js(sweep)
    for point in ("aux_depth=1", "aux_depth=2"):
        shutil.copytree(Path(moved) / "runs" / "k1", sweep / point / "run")
        shutil.rmtree(sweep / point / "run" / "figures")
        save_figures(run_figures(sweep / point / "run"), sweep / point / "run" / "figures", False)
        assert script_src(sweep / point / "run" / "figures" / "depth.html") == (
            sweep / point / "run" / "figures" / f"../../../{PLOTLY_JS}"
        )
    assert sorted(sweep.rglob("plotly*.js")) == [shared]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed")
def test_figure_html_draws_offline_from_file_url(root, tmp_path):
    from playwright.sync_api import sync_playwright

    shutil.copytree(root / "runs" / "k1", tmp_path / "runs" / "k1")
    figures = tmp_path / "runs" / "k1" / "figures"
    save_figures(run_figures(tmp_path / "runs" / "k1"), figures, png=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.route("http*://**", lambda route: route.abort())  # offline: nothing fetched
            page.goto((figures / "depth.html").as_uri())
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=20_000)
            names = page.evaluate(
                "() => document.querySelector('.js-plotly-plot').data.map(t => t.name)"
            )
        finally:
            browser.close()
    assert names == ["greedy-cnn sequential"]
