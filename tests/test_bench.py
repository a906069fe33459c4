"""`workbench bench`: it runs and writes its figures; their values are not asserted (noisy)."""

from __future__ import annotations

import json
import math

import torch

from workbench.bench import tensor_memory
from workbench.cli import main
from workbench.config import Config
from workbench.local.objectives import OBJECTIVES
from workbench.models import build_model, forward_flops

METHODS = ("sequential", "parallel", "end-to-end")


def _positive(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_quick_bench_writes_every_figure(tmp_path, capsys):
    threads = torch.get_num_threads()
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.md").read_text().startswith("# workbench bench (quick)")
    assert r["quick"] and r["device"] == "cpu" and r["repeats"] >= 1
    assert r["flops"]["forward_per_image"] > 0

    methods = r["methods"]
    for m in METHODS:
        assert _positive(methods[m]["images_per_s"]) and _positive(methods[m]["train_tflops_per_s"])
        per_module = methods[m]["per_module_images_per_s"]
        assert len(per_module) == methods["n_modules"] and all(map(_positive, per_module))

    memory = r["memory"]
    assert memory["n_modules"] == [2, 4, 8]
    variants = ["end-to-end", "end-to-end, checkpointed", "sequential",
                "sequential, prefix with grad", "parallel"]  # fmt: skip
    variants += [f"parallel, {name}" for name in OBJECTIVES if name != "cross-entropy"]
    rows = {(row["variant"], row["n_modules"]): row for row in memory["rows"]}
    assert set(rows) == {(v, k) for v in variants for k in (2, 4, 8)}
    assert all(r["peak_bytes"] > 0 and _positive(r["ratio_to_end_to_end"]) for r in rows.values())
    assert all(rows["end-to-end", k]["ratio_to_end_to_end"] == 1.0 for k in (2, 4, 8))
    assert "| parallel, infopro-contrast |" in (tmp_path / "bench.md").read_text()
    # the run's own estimate beside the measurement, where the row is a plain config
    for (variant, k), row in rows.items():
        if variant in ("end-to-end, checkpointed", "sequential, prefix with grad"):
            assert row["estimated_bytes"] is None
        else:
            assert 0.7 < row["estimate_to_measured"] < 1.3, (variant, k, row)
    assert "## The memory estimate against the measured peak" in (tmp_path / "bench.md").read_text()

    rows = r["depth"]["rows"]
    assert [row["n_modules"] for row in rows] == [2, 4, 8]
    for row in rows:
        assert _positive(row["sequential_s"]) and _positive(row["parallel_s"])
        assert _positive(row["sequential_to_parallel"]) and _positive(row["sequential_growth"])

    callbacks = r["callbacks"]
    if "skipped" not in callbacks:  # the live plots need plotly and ipywidgets
        assert _positive(callbacks["ratio"])

    fast = r["fast_paths"]
    expected = {
        "frozen_prefix_no_grad",
        "frozen_prefix_inference_mode",
        "resident_data",
        "no_host_sync",
        "bf16_autocast",
        "channels_last",
        "pinned_memory",
        "feature_cache",
    }
    assert set(fast) == expected
    for name in ("frozen_prefix_no_grad", "resident_data", "no_host_sync", "feature_cache"):
        assert _positive(fast[name]["speedup"]), name
        assert _positive(fast[name]["before_images_per_s"]), name
    assert _positive(fast["feature_cache"]["cache_build_s"])
    pipeline = r["pipeline"]["cpu"]  # 2 worker processes against one process
    assert pipeline["workers"] == 2 and _positive(pipeline["ratio"])
    assert _positive(pipeline["pipeline_images_per_s"]) and "skipped" in r["pipeline"]["gpus"]
    assert "skipped" in r["compile"]  # --quick leaves the minutes of compiling out
    assert r["cpu_threads"] == 1  # --quick: one thread, robust on a shared runner
    assert torch.get_num_threads() == threads  # and the process's own are back


def test_bench_refuses_bad_flags_in_one_line(tmp_path, capsys):
    assert main(["bench", "--quick", "--skip", "nonsense", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("workbench bench: error: skip: got 'nonsense'") and err.count("\n") == 1
    assert not (tmp_path / "bench.json").exists()
    if not torch.cuda.is_available():
        assert main(["bench", "--quick", "--device", "cuda", "--out", str(tmp_path)]) == 2
        assert "device: got 'cuda'" in capsys.readouterr().err


def test_forward_flops_counts_convolutions_and_linear_layers():
    """One 3x3 conv 1 -> 8 channels on 32x32, then a head: 2x2 average and Linear(32 -> 10)."""
    config = Config(n_modules=1, width=8, aux_depth=1, device="cpu")
    trunk, heads = forward_flops(build_model(config), torch.zeros(1, 1, 32, 32))
    assert trunk == [2 * 32 * 32 * 8 * 9]
    assert heads == [2 * 4 * 8 * 10]


def test_tensor_memory_tracks_allocations_until_they_are_freed():
    before = torch.ones(1000)
    with tensor_memory() as tracked:
        a = torch.empty(250_000)  # 1 MB
        b = a.add_(1)  # in place: nothing new
        c = a.view(500, 500)  # a view: nothing new
        del a, b, c
        d = torch.empty(125_000)  # 0.5 MB, after the 1 MB is freed
        before.mul_(2)
    assert tracked.peak == 1_000_000
    assert tracked.live == 500_000
    del d


def test_a_configs_training_peak_is_measured_as_the_bench_measures_it(tmp_path):
    from workbench.bench.memory import training_peak_bytes

    config = Config(n_train=256, width=8, n_modules=3, method="parallel", objective="infopro",
                    device="cpu", out=str(tmp_path / "unused"))  # fmt: skip
    peak = training_peak_bytes(config)
    assert isinstance(peak, int) and peak > 0
    assert training_peak_bytes(config) == peak  # tensor bytes: the same every time
    assert not (tmp_path / "unused").exists()  # it trains in a folder of its own, then drops it
