"""Series: variants over seeds, their spread, the verdict on an effect, full-scale overlays."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from workbench import Config
from workbench.batch.series import (
    Series,
    full_scale_results,
    run_series,
    series_figures,
    series_results,
    variant_configs,
)


def rows(variant: str, accs_by_seed: dict[int, list[float]]) -> list[dict]:
    return [
        {"variant": variant, "seed": seed, "module": k, "test_acc": acc}
        for seed, accs in accs_by_seed.items()
        for k, acc in enumerate(accs, start=1)
    ]


def series_of(*parts: list[dict]) -> Series:
    results = [r for part in parts for r in part]
    return Series(results, list(dict.fromkeys(r["variant"] for r in results)))


def test_an_effect_holds_only_beyond_the_spread_and_over_three_seeds():
    wide = series_of(
        rows("a", {0: [0.5, 0.70], 1: [0.5, 0.71], 2: [0.5, 0.72]}),
        rows("b", {0: [0.5, 0.60], 1: [0.5, 0.61], 2: [0.5, 0.62]}),
    )
    effect = wide.effect("a beats b", "a", "b")
    assert effect.difference == pytest.approx(0.10)
    assert effect.spread == pytest.approx((0.01**2 + 0.01**2) ** 0.5)
    assert effect.holds and "shown" in str(effect) and "not shown" not in str(effect)
    # the same means with seeds spread by 0.1 each: the difference is within what reseeding moves
    noisy = series_of(
        rows("a", {0: [0.5, 0.61], 1: [0.5, 0.71], 2: [0.5, 0.81]}),
        rows("b", {0: [0.5, 0.51], 1: [0.5, 0.61], 2: [0.5, 0.71]}),
    )
    assert not noisy.effect("a beats b", "a", "b").holds
    # two seeds are never enough, however clear the difference
    two = series_of(
        rows("a", {0: [0.5, 0.9], 1: [0.5, 0.9]}), rows("b", {0: [0.5, 0.1], 1: [0.5, 0.1]})
    )
    assert "fewer than 3 seeds" in str(two.effect("a beats b", "a", "b"))
    # depth within one variant: last module against the first
    assert wide.effect("depth", "a", "a", module=-1, worse_module=1).holds


def test_results_csv_reads_back_and_a_full_scale_file_is_drawn_dashed_beside(tmp_path: Path):
    laptop = series_of(rows("k=1", {s: [0.4, 0.45 + s / 100] for s in range(3)}))
    laptop.figures = series_figures(laptop)
    laptop.save(tmp_path / "run", png=False)
    back = Series.from_csv(tmp_path / "run" / "results.csv")
    for read, written in zip(back.summary(), laptop.summary(), strict=True):
        assert read == pytest.approx(written)

    assert full_scale_results("greedy_layerwise", tmp_path / "none") is None
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "greedy_layerwise.csv").write_text(
        "variant,seed,module,test_acc\nk=1,0,1,0.6\nk=1,0,2,0.88\n"
    )
    full = full_scale_results("greedy_layerwise", tmp_path / "full")
    assert full is not None and full.values("k=1") == [0.88]
    depth = series_figures(laptop, full)["depth"]
    names = [t.name for t in depth.data]
    assert names == ["k=1 (n=3)", "full scale: k=1 (n=1)"]
    assert depth.data[1].line.dash == "dash" and depth.data[0].line.dash is None
    assert depth.layout.yaxis.range[1] >= 0.88  # the axis makes room for the full-scale line

    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a results.csv"):
        Series.from_csv(tmp_path / "bad.csv")


def test_run_series_trains_each_variant_per_seed_and_reuses_finished_runs(tmp_path: Path, capsys):
    base = Config(n_train=500, n_test=200, epochs=3, width=16, n_modules=2, device="cpu")
    variants = {"k=1": {"aux_depth": 1}, "k=2": {"aux_depth": 2}}
    series = run_series(base, variants, tmp_path, seeds=[0, 1])
    assert {(r["variant"], r["seed"]) for r in series.results} == {
        (v, s) for v in variants for s in (0, 1)
    }
    assert len(series.results) == 2 * 2 * 2  # one row per run and module
    assert all(r["test_acc"] > 0.4 for r in series.results if r["module"] == 2)  # chance: 0.1
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 4 and folders[0].startswith("k_1-s0-")
    capsys.readouterr()
    again = run_series(base, variants, tmp_path, seeds=[0, 1])
    assert capsys.readouterr().out.count("(finished before: reused)") == 4
    assert again.results == series.results
    # the network's test accuracy after each epoch: a curve per run, over the training budget
    # (sequential: module 2, the network's last, trains in the run's epochs 4 to 6)
    assert len(series.curves) == 2 * 2 * 3 and {r["epoch"] for r in series.curves} == {4, 5, 6}
    last = {(r["variant"], r["seed"]): r["test_acc"] for r in series.curves if r["epoch"] == 6}
    assert last == {(r["variant"], r["seed"]): r["test_acc"] for r in series.results
                    if r["module"] == 2}  # fmt: skip
    assert "budget" in series.figures and len(series.curve_summary()) == 2 * 3
    # a changed parameter trains new runs in new folders instead of clashing with the old ones
    run_series(base.replace(epochs=1), {"k=1": {"aux_depth": 1}}, tmp_path, seeds=[0])
    assert len(list(tmp_path.iterdir())) == 5


def test_an_unreadable_run_is_listed_with_its_reason_and_left_out_of_the_statistics(
    tmp_path: Path, capsys
):
    base = Config(n_train=256, n_test=128, epochs=1, batch_size=64, width=8, n_modules=2,
                  device="cpu")  # fmt: skip
    variants = {"k=1": {"aux_depth": 1}}
    run_series(base, variants, tmp_path, seeds=[0, 1, 2])
    folders = {
        key: Path(c.out) for key, c in variant_configs(base, variants, tmp_path, [0, 1, 2]).items()
    }
    metrics = folders["k=1", 0] / "metrics.jsonl"
    line = len(metrics.read_text().splitlines()) + 1
    with open(metrics, "a") as f:  # a hand edit gone wrong, after the run's own rows
        f.write("{oops\n")
    capsys.readouterr()
    series = run_series(base, variants, tmp_path, seeds=[0, 1, 2])
    assert capsys.readouterr().out.count("(finished before: reused)") == 3
    reason = (
        "metrics.jsonl: not valid JSON (Expecting property name enclosed in double quotes: "
        f"line {line} column 2)"
    )
    assert series.unreadable == [{"variant": "k=1", "seed": 0, "status": "unreadable",
                                  "error": reason, "run_dir": str(folders["k=1", 0])}]  # fmt: skip
    # means and spreads over seeds 1 and 2 alone, and their curves alone
    summaries = [json.loads((folders["k=1", s] / "summary.json").read_text()) for s in (1, 2)]
    last = [s["per_module_test_acc"][-1] for s in summaries]
    by_module = {r["module"]: r for r in series.summary()}
    assert sorted(by_module) == [1, 2] and by_module[2]["seeds"] == 2
    assert by_module[2]["test_acc_mean"] == pytest.approx(statistics.fmean(last))
    assert by_module[2]["test_acc_sd"] == pytest.approx(statistics.stdev(last))
    assert series.headline()[0]["seeds"] == 2 and series.headline()[0]["unreadable"] == 1
    assert {r["seed"] for r in series.curves} == {1, 2}
    # results.csv keeps the unreadable row, and reads back the same
    series.save(tmp_path / "saved", png=False)
    back = Series.from_csv(tmp_path / "saved" / "results.csv")
    assert [r["error"] for r in back.unreadable] == [reason]
    assert back.values("k=1") == pytest.approx(last, abs=1e-6)

    # a summary.json holding no object: unreadable too, the one readable run still measured
    (folders["k=1", 1] / "summary.json").write_text("[]")
    results = series_results(folders)
    errors = [r["error"] for r in results if r.get("status") == "unreadable"]
    assert errors == [reason, "summary.json: holds an array, not a JSON object"]
    assert Series(results, ["k=1"]).values("k=1") == [last[1]]


def curve_series(curves: dict[str, dict[int, list[float]]]) -> Series:
    """A Series of curves only: {variant: {seed: accuracy after epoch 1, 2, ...}}."""
    rows = [
        {"variant": v, "seed": seed, "epoch": e, "test_acc": acc}
        for v, by_seed in curves.items()
        for seed, accs in by_seed.items()
        for e, acc in enumerate(accs, start=1)
    ]
    return Series([], list(curves), curves=rows)


def test_the_crossing_of_two_budget_curves_is_said_from_the_runs():
    series = curve_series({
        "end to end": {0: [0.30, 0.40, 0.50, 0.60], 1: [0.32, 0.42, 0.52, 0.62]},
        "layer-wise": {0: [0.40, 0.45, 0.48, 0.50], 1: [0.42, 0.47, 0.50, 0.52]},
    })  # fmt: skip
    said = series.crossing("end to end", "layer-wise")
    assert said.startswith("end to end overtakes layer-wise between 2 and 3 epochs (the curves")
    assert "at 4 epochs end to end leads by 0.100 (spread 0.020: larger)" in said
    assert series.crossing("layer-wise", "end to end") == said  # named by who leads
    summary = series.curve_summary()
    assert summary[0] == {"variant": "end to end", "epoch": 1, "test_acc_mean": pytest.approx(0.31),
                          "test_acc_sd": pytest.approx(0.01414, abs=1e-4), "seeds": 2}  # fmt: skip
    ahead = curve_series({"a": {0: [0.5, 0.6]}, "b": {0: [0.4, 0.55]}})
    assert ahead.crossing("a", "b").startswith("no crossing within 2 epochs: a leads at every")
    assert "spread 0.000: larger" in ahead.crossing("a", "b")
    lone = curve_series({"a": {0: [0.5]}, "b": {}})
    assert lone.crossing("a", "b") == "a and b: no common budget measured"
