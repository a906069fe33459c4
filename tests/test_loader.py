"""A streamed dataset's loader: worker counts, workers kept all run, exact epochs, the device
decoder (run on the CPU: decode_jpeg with device "cpu"), and the bench's loader section.

The image folders are written here under tmp_path (JPEG and PNG files, real ImageFolder
layouts); the DataLoader workers are real processes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_folders import make_imagefolder, no_workers_left

from workbench.config import Config, ConfigError
from workbench.data import DataError, load_data, make_batches, statistics_batches
from workbench.data.device_decode import (
    EncodedReader,
    Planner,
    decode_and_augment,
    decodes_on_device,
)
from workbench.data.folders import StreamedData
from workbench.data.streaming import (
    BatchKey,
    PixelReader,
    ReaderPool,
    StreamedBatches,
    build_transform,
    transform_specs,
    transforms,
    worker_count,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("loader"))


def config(root: Path, **fields) -> Config:
    values = dict(
        dataset="imagefolder",
        data_dir=str(root),
        image_size=16,
        data_workers=2,
        batch_size=16,
        device="cpu",
        normalization="half",
    )
    values.update(fields)
    return Config(**values)


def workers_now() -> set[int]:
    return {p.pid for p in multiprocessing.active_children()}


def uint8_epoch(batches: StreamedBatches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*batches.iterate(normalized=False))
    return torch.cat(xs), torch.cat(ys)


def epoch_the_old_way(data: StreamedData, c: Config, epoch: int) -> tuple[torch.Tensor, ...]:
    """An epoch as the loader computed it before its workers persisted: the order from the
    epoch seed, and each image's v2 transform under the seed of (epoch seed, index), in this
    process (the seeding formulas written out, so that a change to them fails here)."""
    epoch_seed = (c.seed * 1_000_003 + epoch) % 2**63
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(epoch_seed))
    train_transform = transforms(c)[0]
    images = []
    for i in order.tolist():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((epoch_seed * 0x9E3779B97F4A7C15 + i) % 2**64)
            images.append(train_transform(Image.open(data.train.path(i)).convert("RGB")))
    return torch.stack(images), data.train_y[order]


# -- how many workers ----------------------------------------------------------------------------
def test_worker_count_follows_the_cores_and_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    c = Config(dataset="imagefolder")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert worker_count(c, "cpu") == 8  # capped: training needs the CPU's cores too
    assert worker_count(c, "cuda") == 15  # every core but the main process's
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 4 torchrun processes share the 16 cores
    assert worker_count(c, torch.device("cuda", 1)) == 3
    assert worker_count(c, "cpu") == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert worker_count(c, "cpu") == 2 and worker_count(c, "cuda") == 2  # 2 cores: both
    assert worker_count(c.replace(data_workers=24), "cpu") == 24  # the user's exact choice
    assert worker_count(c.replace(data_workers=24), "cuda") == 24


# -- gpu_decode ----------------------------------------------------------------------------------
def test_gpu_decode_choice_and_refusals(folder: Path) -> None:
    c = Config(dataset="imagefolder")
    assert decodes_on_device(c, "cuda") and not decodes_on_device(c, "cpu")  # auto
    assert not decodes_on_device(c.replace(gpu_decode="false"), "cuda")
    assert decodes_on_device(c.replace(gpu_decode="true"), "cuda")
    with pytest.raises(DataError, match=r"^gpu_decode: got 'true' for a run on the cpu; allowed"):
        decodes_on_device(c.replace(gpu_decode="true"), CPU)
    refusals = {
        "gpu_decode: got 'true' for cifar10, which is held in memory; allowed: auto or false": (
            dict(dataset="cifar10", gpu_decode="true")
        ),
        "gpu_decode: got 'true' with device 'cpu'; allowed: auto or false": (
            dict(dataset="imagefolder", gpu_decode="true", device="cpu")
        ),
    }
    for start, fields in refusals.items():
        with pytest.raises(ConfigError) as err:
            Config(**fields)
        assert str(err.value).startswith(start) and "\n" not in str(err.value)
    if not torch.cuda.is_available():  # device auto is the CPU here: refused before loading
        with pytest.raises(DataError, match=r"^gpu_decode: got 'true' for a run on the cpu"):
            load_data(config(folder, device="auto", gpu_decode="true"))
    data = load_data(config(folder))
    assert data.provenance["decode"].startswith("workers (PIL)")
    assert data.provenance["data_workers"] == 2


# -- workers kept all run ------------------------------------------------------------------------
def test_workers_persist_across_epochs_evaluations_and_statistics(folder: Path) -> None:
    c = config(folder)
    data = load_data(c)
    train, test = make_batches(data, c, CPU)
    stats = statistics_batches(data, c, CPU)
    assert train.pool is test.pool is stats.pool  # one pool of workers for the whole run
    seen = []
    for batches in (train, test, stats, train, test):
        sum(len(y) for _, y in batches)
        seen.append(workers_now())
    assert len(seen[0]) == 2 and all(pids == seen[0] for pids in seen)  # the same processes
    assert data.provenance["data_workers"] == 2
    stats.close()  # any of the three ends the shared workers, now
    assert no_workers_left()
    for batches in (train, test, stats):
        batches.close()  # and closing again, or the others, is safe
    x, _ = next(iter(train))  # read again after close: new workers
    assert x.shape == (16, 3, 16, 16) and len(workers_now() - seen[0]) == 2
    train.close()
    assert no_workers_left()


def test_a_whole_run_reads_every_epoch_with_the_same_workers(folder: Path, tmp_path: Path) -> None:
    """Two modules, two epochs each: training, the evaluations and BatchNorm re-estimates all
    read by one pool of workers, ended with the run."""
    from workbench.events import EPOCH_END
    from workbench.training import run_experiment

    seen: list[set[int]] = []

    def record(event: str, info: dict) -> None:
        if event == EPOCH_END:  # after the epoch's training and its evaluation
            seen.append(workers_now())

    c = config(folder, n_modules=2, width=8, epochs=2, out=str(tmp_path / "run"))
    summary = run_experiment(c, callbacks=[record])
    assert summary["status"] == "finished" and summary["data"]["data_workers"] == 2
    assert summary["data"]["decode"].startswith("workers (PIL)")
    assert len(seen) == 4 and len(seen[0]) == 2 and all(pids == seen[0] for pids in seen)
    assert no_workers_left()


def test_epochs_are_todays_for_the_seed(folder: Path) -> None:
    c = config(folder, n_train=40)
    data = load_data(c)
    train, _ = make_batches(data, c, CPU)
    for epoch in range(2):  # the second from the same (persistent) workers
        x, y = uint8_epoch(train)
        expected_x, expected_y = epoch_the_old_way(data, c, epoch)
        assert torch.equal(y, expected_y) and torch.equal(x, expected_x)
    train.close()
    assert no_workers_left()


def test_an_abandoned_or_interleaved_epoch_leaves_the_next_ones_right(folder: Path) -> None:
    c = config(folder, n_train=48)
    data = load_data(c)
    expected = [epoch_the_old_way(data, c, e) for e in range(4)]
    train, test = make_batches(data, c, CPU)
    test_x, test_y = uint8_epoch(test)
    pids = workers_now()
    for _batch in train.iterate(normalized=False):  # epoch 0: a run stopped after one batch
        break
    x, y = uint8_epoch(train)  # epoch 1: the persistent iterator drained epoch 0's rest
    assert torch.equal(x, expected[1][0]) and torch.equal(y, expected[1][1])
    held = train.iterate(normalized=False)  # epoch 2, left suspended after two batches
    first = [next(held), next(held)]
    again_x, again_y = uint8_epoch(test)  # an evaluation meanwhile takes the workers
    assert torch.equal(again_x, test_x) and torch.equal(again_y, test_y)
    rest = list(held)  # epoch 2 finishes on workers of its own, as it would have been
    x = torch.cat([b[0] for b in first + rest])
    assert torch.equal(x, expected[2][0])
    x, y = uint8_epoch(train)  # epoch 3 on the persistent workers again
    assert torch.equal(x, expected[3][0]) and workers_now() == pids
    train.close()
    assert no_workers_left()


def test_an_unreadable_file_found_by_persistent_workers_names_it(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "folder")
    c = config(root, augment="none")
    data = load_data(c)
    train, _ = make_batches(data, c, CPU)
    uint8_epoch(train)  # the workers are up, and stay
    victim = Path(data.train.path(5))
    original = victim.read_bytes()
    victim.write_bytes(original[:200])
    with pytest.raises(DataError) as err:
        uint8_epoch(train)
    message = str(err.value)
    assert message.startswith(f"data_dir: got unreadable image {str(victim)!r} while reading")
    assert "\n" not in message
    assert no_workers_left()  # the error ended them
    victim.write_bytes(original)  # replaced: the next epoch reads again
    assert len(uint8_epoch(train)[1]) == len(data.train)
    train.close()


# -- decoding on the device (here the CPU) -------------------------------------------------------
def square_images(root: Path) -> list[str]:
    """32 x 32 noise as RGB JPEG, PNG, greyscale JPEG and CMYK JPEG (the last three: PIL)."""
    rng, paths = np.random.default_rng(3), []
    for k, (suffix, mode) in enumerate([(".jpg", "RGB"), (".png", "RGB"), (".jpg", "L"),
                                        (".jpg", "CMYK")] * 3):  # fmt: skip
        path = root / f"image_{k}{suffix}"
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(path)
        paths.append(str(path))
    return paths


def test_device_decoding_gives_the_pil_paths_crops_exactly_without_resizing(
    tmp_path: Path,
) -> None:
    """Images already at image_size are not resized: with the same decoder (libjpeg-turbo on
    the CPU) the pad-crops and flips are the PIL path's to the pixel."""
    paths = square_images(tmp_path)
    train, _ = transform_specs(config(tmp_path, image_size=32, augment="crop-flip"))
    pil, device = PixelReader({"train": build_transform(train)}), EncodedReader({"train": train})
    key = BatchKey("train", paths, list(range(len(paths))), seed=11)
    batch = device[key]
    assert batch.encoded == [True, False, False, False] * 3  # only RGB JPEGs reach decode_jpeg
    x = decode_and_augment(batch, "cpu")
    assert x.dtype == torch.uint8 and x.shape == (12, 3, 32, 32)
    assert torch.equal(x, pil[key])
    assert torch.equal(decode_and_augment(device[key], CPU), x)  # deterministic for a seed
    assert not torch.equal(decode_and_augment(device[key._replace(seed=12)], CPU), x)


@pytest.mark.parametrize("augment", ["resized-crop-flip", "crop-flip", "none"])
def test_device_decoding_is_close_to_the_pil_path(folder: Path, augment: str) -> None:
    """Resized images (48 x 40 files, crops of 16): the same boxes, another resizer."""
    c = config(folder, augment=augment)
    data = load_data(c)
    for spec, name in zip(transform_specs(c), ("train", "test")):
        pil, device = PixelReader({name: build_transform(spec)}), EncodedReader({name: spec})
        key = BatchKey(name, [data.train.path(i) for i in range(24)], list(range(24)), seed=5)
        expected = pil[key].float()
        gap = (decode_and_augment(device[key], CPU).float() - expected).abs().mean()
        assert gap < 1.0  # of 255: a level at most on average
        if spec.resized_crop or spec.pad_crop:  # another seed: other boxes, far apart
            other = decode_and_augment(device[key._replace(seed=6)], CPU).float()
            assert (other - expected).abs().mean() > 10 * gap + 5


def test_planner_draws_the_v2_transforms_parameters(folder: Path) -> None:
    """The plan's box is the one RandomResizedCrop draws under the same seed."""
    spec = transform_specs(config(folder, image_size=16))[0]
    assert spec.resized_crop and spec.flip
    crop = build_transform(spec).transforms[0]
    for seed in range(5):
        torch.manual_seed(seed)
        params = crop.make_params([torch.zeros(3, 40, 48)])
        flip = bool(torch.rand(1) < 0.5)
        torch.manual_seed(seed)
        plan = Planner(spec).plan(40, 48)
        assert plan[:4] == [params["top"], params["left"], params["height"], params["width"]]
        assert plan[4:10] == [16, 16, 0, 0, 0, 0] and plan[10] == int(flip)


def test_device_decoding_through_persistent_workers_and_the_batches(folder: Path) -> None:
    """The whole gpu_decode path but the GPU: workers reading bytes, the batch decoded and
    augmented in this process, normalized like the PIL path's epoch."""
    c = config(folder)
    data = load_data(c)
    specs = dict(zip(("train", "test"), transform_specs(c)))
    pool = ReaderPool(EncodedReader(specs), workers=2, pin=False)
    common = dict(batch_size=16, device=CPU, mean=data.mean, std=data.std, seed=0)
    on_device = StreamedBatches(data.train, pool=pool, transform="train", shuffle=True, **common)
    with_pil, _ = make_batches(data, c, CPU)
    for _ in range(2):
        x, y = uint8_epoch(on_device)
        expected_x, expected_y = uint8_epoch(with_pil)
        assert torch.equal(y, expected_y)
        assert (x.float() - expected_x.float()).abs().mean() < 1.0
    pids = workers_now()
    tests = StreamedBatches(data.test, pool=pool, transform="test", **common)
    assert len(uint8_epoch(tests)[1]) == len(data.test) and workers_now() == pids
    on_device.close()
    with_pil.close()
    assert no_workers_left()


def test_device_decoding_names_an_unreadable_file(tmp_path: Path) -> None:
    paths = square_images(tmp_path)
    train, _ = transform_specs(config(tmp_path, image_size=32, augment="crop-flip"))
    reader = EncodedReader({"train": train})
    truncated = Path(paths[4])  # a JPEG whose header is whole: only decoding finds it
    whole = truncated.read_bytes()
    truncated.write_bytes(whole[: len(whole) * 4 // 5])
    key = BatchKey("train", paths, list(range(len(paths))), seed=1)
    with pytest.raises(DataError) as err:
        decode_and_augment(reader[key], CPU)
    assert str(err.value).startswith(f"data_dir: got unreadable image {str(truncated)!r}")
    assert "\n" not in str(err.value)
    Path(paths[1]).write_bytes(b"not an image")  # no header: the worker finds it
    unreadable = reader[key]
    assert unreadable.path == paths[1]


# -- the bench's loader section ------------------------------------------------------------------
def test_bench_loader_section_measures_a_folder(folder: Path, tmp_path: Path, capsys) -> None:
    from workbench.cli import main

    out = tmp_path / "bench"
    flags = ["--quick", "--dataset", "imagefolder", "--data-dir", str(folder), "--out", str(out)]
    assert main(["bench", *flags, "--only", "loader", "--batch-size", "8", "--n-train", "48"]) == 0
    r = json.loads((out / "bench.json").read_text())["loader"]
    pil = r["decoders"]["workers (PIL)"]
    assert pil["images_per_s"] > 0 and pil["workers"] >= 1 and r["images_per_epoch"] == 32
    assert pil["decode"].startswith("workers (PIL)")
    if not torch.cuda.is_available():
        assert "CUDA" in r["decoders"]["device (decode_jpeg)"]["skipped"]
    assert len(r["net"]["per_pass_images_per_s"]) == 4  # sequential: a pass per module
    assert r["bottleneck"] in ("loader", "net") and r["bottleneck"] in r["verdict"]
    assert "## Loader against the net" in (out / "bench.md").read_text()
    assert no_workers_left()
    capsys.readouterr()
    assert main(["bench", *flags, "--only", "methods,loader"]) == 2  # the others: in memory
    err = capsys.readouterr().err
    assert err.startswith("workbench bench: error: dataset: got 'imagefolder' for bench ")
    assert "--only loader" in err and err.count("\n") == 1


def test_bench_loader_section_skips_a_dataset_held_in_memory(tmp_path: Path) -> None:
    from workbench.cli import main

    assert main(["bench", "--quick", "--only", "loader", "--out", str(tmp_path)]) == 0
    loader = json.loads((tmp_path / "bench.json").read_text())["loader"]
    assert "held in memory" in loader["skipped"]
