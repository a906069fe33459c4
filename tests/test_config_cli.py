"""The config object and the command line: round trips, presets, and every bad input's error."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from workbench import PRESETS, Config, ConfigError, preset
from workbench.cli import main


def test_config_round_trips_through_json():
    config = Config(
        arch="resnet32",
        n_modules=4,
        method="parallel",
        regularization="kinetic",
        tau=0.5,
        varying_tau=True,
        schedule="accelerated",
    )
    assert Config.from_json(config.to_json()) == config
    assert config.replace(tau=2.0).tau == 2.0 and config.tau == 0.5


def test_from_dict_takes_strings_as_the_cli_and_widgets_give_them():
    config = Config.from_dict({"epochs": "3", "lr": "0.01", "probe": "true", "aux_depth": 3})
    assert (config.epochs, config.lr, config.probe, config.aux_depth) == (3, 0.01, True, 3)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_a_valid_config(name):
    config = preset(name)
    assert isinstance(config, Config)
    assert preset(name, epochs=1).epochs == 1


def test_presets_follow_the_papers():
    k1 = preset("belilovsky-k1-cifar10")
    assert (k1.n_modules, k1.width, k1.batchnorm, k1.aux_depth) == (5, 256, False, 1)
    assert k1.downsampling_positions() == [3, 4]  # layerCNN's --down [1,2], counted from 0
    assert (k1.lr, k1.lr_step, k1.lr_decay, k1.epochs, k1.weight_decay) == (0.1, 15, 0.2, 50, 5e-4)
    assert k1.momentum_restart and k1.normalization == "layercnn" and k1.conv_bias == "first"
    dgl = preset("dgl-cifar10")
    assert (dgl.downsampling, dgl.aux_type, dgl.last_aux_type) == ("maxpool", "mlp-sr", "mlp")
    stl = preset("trgl-resnet110-stl10")
    assert (stl.batch_size, stl.lr, stl.epochs, stl.aux_type) == (64, 0.002, 300, "1cnn")
    assert stl.eval_protocol == "trgl-best" and stl.shortcut == "A"
    trgl = preset("trgl-resnet32-cifar10")
    assert (trgl.regularization, trgl.lr, trgl.label_smoothing, trgl.init) == (
        "kinetic",
        0.003,
        0.1,
        "orthogonal",
    )
    assert trgl.augment == "reflect-crop-flip"  # TRGL's CIFAR loader pads by reflection
    # every reference code tests with BN's running averages, so its presets do too
    references = [n for n, p in PRESETS.items() if p.reference or n.startswith(("dgl", "trgl"))]
    assert len(references) >= 9 and all(not preset(n).precise_bn for n in references)
    assert preset("quick").precise_bn  # the workbench's own presets keep the default


# (CLI arguments, field named in the error, text that must appear in it)
BAD_INPUTS = [
    (["--arch", "resnet99"], "arch", "greedy-cnn"),
    (["--aux-depth", "-1"], "aux_depth", "0 to 4"),
    (["--aux-depth", "5"], "aux_depth", "0 to 4"),
    (["--last-aux-depth", "-2"], "last_aux_depth", "-1 (as aux_depth) or 0 to 4"),
    (["--image-size", "64"], "image_size", "streamed datasets"),
    (["--dataset", "cifar10", "--augment", "resized-crop-flip"], "augment", "streamed"),
    (["--normalization", "imagenet"], "normalization", "allowed: dataset"),
    (["--n-units", "5", "--arch", "vgg11"], "n_units", "greedy-cnn and resnet"),
    (["--conv-bias", "all", "--arch", "resnet20"], "conv_bias", "allowed: auto"),
    (["--shortcut", "A"], "shortcut", "no residual blocks"),
    (["--regularization", "kinetic"], "regularization", "no residual blocks"),
    (["--eval-protocol", "best"], "eval_protocol", "trgl-best"),
    (["--dataset", "imagenet", "--probe", "true"], "probe", "streamed"),
    (["--tau", "0"], "tau", "> 0"),
    (["--tau", "-1"], "tau", "> 0"),
    (["--epochs", "0"], "epochs", "positive"),
    (["--epochs", "two"], "epochs", "a number"),
    (["--lr", "-0.1"], "lr", "> 0"),
    (["--batch-size", "0"], "batch_size", "positive"),
    (["--momentum", "1.5"], "momentum", "momentum < 1"),
    (["--dataset", "imagenet21k"], "dataset", "cifar10"),
    (["--downsampling", "pixelshuffle"], "downsampling", "invertible"),
    (["--method", "backprop"], "method", "end-to-end"),
    (["--aux-type", "transformer"], "aux_type", "mlp-sr"),
    (["--regularization", "l2"], "regularization", "kinetic"),
    (["--lr-schedule", "linear"], "lr_schedule", "cosine"),
    (["--schedule", "7"], "schedule", "between 1 and 4"),
    (["--schedule", "3,1"], "schedule", "increasing"),
    (["--schedule", "every"], "schedule", "accelerated"),
    (["--n-modules", "6", "--schedule", "1,2,3,4,5,6"], "schedule", "at most 5 downsamplings"),
    (["--arch", "resnet20", "--n-modules", "12"], "n_modules", "1 to 9"),
    (["--n-train", "-5"], "n_train", "subset size"),
    (["--n-train", "999999"], "n_train", "1 to 4000"),
    (["--preset", "belilovsky-k9"], "preset", "belilovsky-k3-cifar10"),
    (["--probe", "maybe"], "probe", "true or false"),
    (["--method", "multilap", "--laps", "3", "--epochs", "2"], "laps", "1 to epochs"),
]


@pytest.mark.parametrize("argv,field,allowed", BAD_INPUTS, ids=[" ".join(b[0]) for b in BAD_INPUTS])
def test_bad_input_is_refused_in_one_line_before_training(argv, field, allowed, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--quiet", "--out", str(out), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"workbench: error: {field}:"), err
    assert "allowed" in err and allowed in err, err
    assert not out.exists()  # refused before any run folder or training


def test_cuda_without_a_gpu_is_refused(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["run", "--quiet", "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "device: got 'cuda'" in err and "allowed: auto, cpu" in err


def test_out_folder_of_another_run_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(Config(epochs=5).to_json())
    assert main(["run", "--quiet", "--out", str(out), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "out:" in err and "epochs=5" in err


def test_unknown_flag_and_unknown_config_key(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--depth", "3"])
    assert e.value.code == 2
    assert "unrecognized arguments: --depth 3" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="config: unknown field 'depth'"):
        Config.from_dict({"depth": 3})


def test_console_script_gives_no_traceback_and_a_nonzero_exit(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "run", "--aux-depth", "-1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "workbench: error: aux_depth: got -1; allowed: 0 to 4"
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_presets_command_lists_every_preset(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS)
    assert "--schedule 1,3" in out  # and what each sets


def test_run_from_a_saved_config_with_overrides(tmp_path, capsys):
    saved = tmp_path / "config.json"
    saved.write_text(Config(n_modules=2, width=4, n_train=128, n_test=64).to_json())
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "--quiet",
            "--config",
            str(saved),
            "--epochs",
            "1",
            "--out",
            str(out),
            "--batch-size",
            "64",
        ]
    )
    assert code == 0
    written = json.loads((out / "config.json").read_text())
    assert (written["n_modules"], written["epochs"], written["batch_size"]) == (2, 1, 64)
    table = capsys.readouterr().out
    assert "module  test acc" in table and "status finished" in table
