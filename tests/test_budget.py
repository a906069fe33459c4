"""The size chooser of the teaching notebooks: the largest size that fits the budget."""

from __future__ import annotations

import pytest

from workbench import Config
from workbench.batch.budget import choose_size, measured_flops_per_s, series_seconds

BASE = Config(dataset="mnist-5k", arch="resnet", n_units=3, n_modules=3, device="cpu")
VARIANTS = {"end to end": {"method": "end-to-end"}, "layer-wise": {"method": "parallel"}}
LADDER = [  # smallest first: images, epochs, width
    {"n_train": 500, "epochs": 2, "width": 8},
    {"n_train": 2000, "epochs": 4, "width": 8},
    {"n_train": 4000, "epochs": 8, "width": 16},
]


def test_a_faster_device_gets_a_larger_size():
    chosen = [
        choose_size(BASE, VARIANTS, LADDER, budget_minutes=10, seeds=3, flops_per_s=speed)
        for speed in (1e8, 3e9, 1e12)  # a slow CPU, a laptop, a GPU
    ]
    assert [c.values for c in chosen] == [LADDER[0], LADDER[1], LADDER[2]]
    for c in chosen:
        assert [v for v, _ in c.estimates] == LADDER
        seconds = [s for _, s in c.estimates]
        assert seconds == sorted(seconds)  # each rung costs more than the one before
    assert chosen[1].seconds <= 600 < chosen[1].estimates[2][1]  # the next would not fit
    assert "size 2 of 3 (n_train=2000, epochs=4, width=8)" in str(chosen[1])
    assert "the smallest size is over budget" in str(chosen[0])


def test_the_estimate_counts_every_variant_and_seed():
    config = BASE.replace(**LADDER[1])
    one = series_seconds(config, VARIANTS, seeds=1, flops_per_s=1e9)
    assert series_seconds(config, VARIANTS, seeds=3, flops_per_s=1e9) == pytest.approx(3 * one)
    single = series_seconds(config, {"end to end": VARIANTS["end to end"]}, 1, 1e9)
    assert 0 < single < one
    # twice the epochs: twice the FLOPs (the per-run overhead stays)
    twice = series_seconds(config.replace(epochs=8), VARIANTS, seeds=1, flops_per_s=1e9)
    assert twice > 1.8 * one - 2 * 3.0


def test_the_device_speed_is_measured_on_the_notebooks_own_network():
    speed = measured_flops_per_s(BASE.replace(n_train=64, width=4, batch_size=16), steps=2)
    assert speed > 1e6  # any CPU trains a tiny ResNet faster than a MFLOP/s
    with pytest.raises(ValueError, match="ladder: got no sizes"):
        choose_size(BASE, VARIANTS, [], budget_minutes=1, seeds=1)


def test_variants_may_depend_on_the_size():
    def a_module_per_block(config):
        return {"layer-wise": {"method": "parallel", "n_modules": config.n_units}}

    ladder = [{"n_units": 3, "n_train": 500}, {"n_units": 9, "n_train": 500}]
    choice = choose_size(BASE, a_module_per_block, ladder, budget_minutes=60, seeds=1,
                         flops_per_s=1e12)  # fmt: skip
    assert choice.values == ladder[1]
    deeper = series_seconds(BASE.replace(**ladder[1]), a_module_per_block(
        BASE.replace(**ladder[1])), 1, 1e12)  # fmt: skip
    assert choice.seconds == pytest.approx(deeper)
