"""Streamed image-folder datasets: layouts, checks, worker batches, determinism, a whole run.

Every dataset here is generated on the fly under tmp_path (small JPEG/PNG files with
class-dependent colours), so nothing is downloaded and a tiny net can learn it.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.config import Config, ConfigError
from workbench.data import DataError, evaluation_indices, load_data, make_batches
from workbench.data.folders import (
    StreamedBatches,
    StreamedData,
    check_images,
    transforms,
)

CPU = torch.device("cpu")
CLASSES = ("cat", "dog", "fox")
COLOURS = ((200, 40, 40), (40, 200, 40), (40, 40, 200))  # what the classes differ by
N_TRAIN, N_VAL = 24, 8  # per class


def write_image(path: Path, colour: tuple[int, ...], rng: np.random.Generator) -> None:
    """A noisy 48 x 40 image of `colour` with a random darker square: JPEG or PNG by suffix."""
    w, h = 48, 40
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    pixels[y : y + h // 3, x : x + w // 3] //= 2
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_imagefolder(root: Path, seed: int = 0) -> Path:
    """root/train/<class>/ and root/val/<class>/, 24 + 8 images per class, JPEG and PNG."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        for c, colour in zip(CLASSES, COLOURS):
            for i in range(n):
                suffix = ".png" if i % 4 == 0 else ".jpg"
                write_image(root / split / c / f"{c}_{i:03d}{suffix}", colour, rng)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("imagefolder"))


@pytest.fixture
def copy(folder: Path, tmp_path: Path) -> Path:
    """A private copy of the image folder, for a test to break."""
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def config(root: Path, **fields) -> Config:
    values = dict(
        dataset="imagefolder",
        data_dir=str(root),
        image_size=32,
        data_workers=2,
        batch_size=16,
        device="cpu",
    )
    values.update(fields)
    return Config(**values)


def unnormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return (x * s + m) * 255


def no_workers_left() -> bool:
    """The DataLoader workers of finished (or failed) iterations have all exited."""
    for _ in range(50):
        if not multiprocessing.active_children():
            return True
        time.sleep(0.1)
    return False


# -- ImageFolder ---------------------------------------------------------------------------------
def test_imagefolder_loads_and_batches_normalized_on_the_device(folder: Path) -> None:
    c = config(folder, augment="none")
    data = load_data(c)
    assert isinstance(data, StreamedData) and data.num_classes == 3
    assert data.classes == list(CLASSES)
    assert data.train_y.bincount().tolist() == [N_TRAIN] * 3
    assert data.test_y.bincount().tolist() == [N_VAL] * 3
    p = data.provenance
    json.dumps(p)
    assert p["dataset"] == "imagefolder" and p["source"] == str(folder.resolve())
    counts = [p[k] for k in ("n_train", "n_test", "train_available", "test_available")]
    assert counts == [72, 24, 72, 24]
    assert p["subset_seed"] is None and "whole test set (24 images)" in p["test_split"]
    assert "72 training images" in p["normalization"]["estimated_from"]
    assert "96 files" in p["checks"]["image_headers"]

    train, test = make_batches(data, c, CPU)
    assert isinstance(train, StreamedBatches) and (len(train), len(test)) == (5, 2)
    assert train.batch_size == 16 and train.epoch == 0 and torch.equal(test.y, data.test_y)
    xs, ys = zip(*train)
    assert train.epoch == 1
    x = torch.cat(xs)
    assert x.dtype == torch.float32 and x.shape == (72, 3, 32, 32)
    assert torch.cat(ys).dtype == torch.int64 and sorted(torch.cat(ys).tolist()) == sorted(
        data.train_y.tolist()
    )
    # statistics of every training image at the test transform: exactly standardized
    assert x.mean((0, 2, 3)).abs().max() < 1e-4
    assert (x.std((0, 2, 3)) - 1).abs().max() < 1e-3
    # the test batches are in order and are the test transform's pixels, normalized
    tx, ty = zip(*test)
    assert torch.equal(torch.cat(ty), data.test_y)
    _, test_transform, _ = transforms(c)
    first = test_transform(Image.open(data.test.path(0)).convert("RGB"))
    assert torch.allclose(unnormalize(tx[0][:1], data.mean, data.std), first.float(), atol=1e-3)
    assert multiprocessing.active_children()  # the workers stay for the next epoch
    train.close()  # the test batches' workers too: they share them
    assert no_workers_left()


def test_named_normalization_uses_the_constants(folder: Path) -> None:
    data = load_data(config(folder, normalization="imagenet"))
    assert data.mean == (0.485, 0.456, 0.406) and data.std == (0.229, 0.224, 0.225)
    assert "estimated_from" not in data.provenance["normalization"]


def test_augmented_batches_are_crops_of_image_size(folder: Path) -> None:
    c = config(folder, image_size=16, normalization="half")  # auto: resized-crop-flip
    train_t, test_t, text = transforms(c)
    assert text["train_transform"] == "RandomResizedCrop(16) + horizontal flip"
    assert text["test_transform"] == "Resize(18) + CenterCrop(16)"  # 16 * 256 / 224
    train, test = make_batches(load_data(c), c, CPU)
    for batches in (train, test):
        x, y = next(iter(batches))
        assert x.shape == (16, 3, 16, 16) and y.shape == (16,)
    train.close()
    flat = config(folder, augment="crop-flip", normalization="half")
    _, _, text = transforms(flat)
    assert "RandomCrop(32, padding=4) + horizontal flip" in text["train_transform"]
    image = Image.open(load_data(flat).train.path(1)).convert("RGB")  # 48 x 40
    assert transforms(flat)[0](image).shape == (3, 32, 32)
    assert transforms(flat)[1](image).shape == (3, 32, 32)
    assert no_workers_left()


def test_subsets_are_class_balanced_and_trgl_best_keeps_the_held_out_half(folder: Path) -> None:
    full = load_data(config(folder, normalization="half"))
    c = config(folder, normalization="half", n_train=30, eval_protocol="trgl-best")
    data = load_data(c)
    assert data.train_y.bincount().tolist() == [10, 10, 10]
    assert data.provenance["subset_seed"] == 0 and data.provenance["n_train"] == 30
    kept = evaluation_indices(24, c)
    assert len(data.test_y) == 12 and torch.equal(data.test_y, full.test_y[kept])
    assert data.test.path(0) == full.test.path(int(kept[0]))
    assert "12 of 24 images" in data.provenance["test_split"]
    half = load_data(c.replace(n_test=12))
    assert len(half.test_y) == 6 and "6 of 12" in half.provenance["test_split"]
    with pytest.raises(DataError, match=r"^n_train: got 73; allowed: 0 \(all\) or 1 to 72"):
        load_data(c.replace(n_train=73))


# -- Tiny ImageNet -------------------------------------------------------------------------------
def make_tiny_imagenet(root: Path) -> tuple[Path, list[str]]:
    """The official layout for 200 wnids: class k's images are uniformly (k, 255 - k, 128)."""
    base = root / "tiny-imagenet-200"
    wnids = sorted(f"n{(k * 7919) % 10**8:08d}" for k in range(200))
    shuffled = wnids[:]
    random.Random(0).shuffle(shuffled)
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(shuffled) + "\n")  # not in sorted order
    rows = []
    for k, wnid in enumerate(wnids):
        image = Image.new("RGB", (16, 16), (k, 255 - k, 128))
        (base / "train" / wnid / "images").mkdir(parents=True)
        image.save(base / "train" / wnid / "images" / f"{wnid}_0.JPEG", quality=95)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")  # not an image
    for i, k in enumerate(random.Random(1).sample(range(200), 200)):  # val in shuffled order
        Image.new("RGB", (16, 16), (k, 255 - k, 128)).save(
            base / "val" / "images" / f"val_{i}.JPEG", quality=95
        )
        rows.append(f"val_{i}.JPEG\t{wnids[k]}\t0\t0\t15\t15")
    (base / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    return base, wnids


def test_tiny_imagenet_layout_loads_with_the_annotated_labels(tmp_path: Path) -> None:
    base, wnids = make_tiny_imagenet(tmp_path)
    c = Config(
        dataset="tiny-imagenet",
        data_dir=str(tmp_path),
        image_size=16,
        normalization="half",
        data_workers=2,
        batch_size=64,
    )
    assert c.resolved_augment == "crop-flip"
    data = load_data(c)
    assert data.num_classes == 200 and data.classes == wnids
    assert len(data.train_y) == 200 and len(data.test_y) == 200
    assert data.provenance["layout"].startswith("Tiny ImageNet")
    train, test = make_batches(data, c, CPU)
    x, y = (torch.cat(parts) for parts in zip(*test))
    assert x.shape == (200, 3, 16, 16) and torch.equal(y, data.test_y)
    red = unnormalize(x, data.mean, data.std)[:, 0].mean((1, 2))
    assert (red - y.float()).abs().max() < 4  # each val image's colour encodes its label
    xt, yt = next(iter(train))
    assert xt.shape == (64, 3, 16, 16)
    train.close()
    # ROOT itself may be the folder holding wnids.txt
    again = load_data(c.replace(data_dir=str(base)))
    assert torch.equal(again.test_y, data.test_y)
    assert no_workers_left()


def test_tiny_imagenet_needs_its_200_classes_and_annotations(tmp_path: Path) -> None:
    base, wnids = make_tiny_imagenet(tmp_path)
    c = Config(dataset="tiny-imagenet", data_dir=str(tmp_path), image_size=16)
    (base / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataError, match=r"^data_dir: .*without val_annotations.txt"):
        load_data(c)
    shutil.rmtree(base / "train" / wnids[0])
    with pytest.raises(DataError, match=r"^data_dir: .*differ from wnids.txt"):
        load_data(c)


# -- ImageNet ------------------------------------------------------------------------------------
class RunsCode:
    """Unpickling this writes a file: what a meta.bin must never be able to do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def make_imagenet(root: Path) -> list[str]:
    """torchvision's prepared layout: 1000 train/<wnid>/ folders, val/<wnid>/ for 10 of them."""
    wnids = [f"n{k:08d}" for k in range(1000)]
    for k, wnid in enumerate(wnids):
        for split in ("train", "val") if k % 100 == 0 else ("train",):
            (root / split / wnid).mkdir(parents=True)
            Image.new("RGB", (8, 8), (k % 256, 0, 0)).save(root / split / wnid / f"{k}.png")
    return wnids


def test_imagenet_layout_reads_names_from_meta_bin_without_running_code(tmp_path: Path) -> None:
    wnids = make_imagenet(tmp_path)
    meta = ({w: (f"class {k}", "synonym") for k, w in enumerate(wnids)}, wnids[::100])
    torch.save(meta, tmp_path / "meta.bin")
    c = config(tmp_path, dataset="imagenet", normalization="imagenet")
    data = load_data(c)
    assert data.num_classes == 1000 and data.class_names[:2] == ["class 0", "class 1"]
    assert data.test_y.tolist() == list(range(0, 1000, 100))  # train's indices, not val's own
    assert "meta.bin" in data.provenance["class_names_from"]
    marker = tmp_path / "ran.txt"
    torch.save((RunsCode(marker), []), tmp_path / "meta.bin")
    data = load_data(c)
    assert not marker.exists() and data.class_names == wnids
    assert "meta.bin not used" in data.provenance["class_names_from"]


def test_imagenet_expects_1000_classes(folder: Path) -> None:
    with pytest.raises(DataError, match=r"^data_dir: got .* with 3 class folders for imagenet"):
        load_data(config(folder, dataset="imagenet"))


# -- bad input, refused before training ----------------------------------------------------------
def refused(c: Config, pattern: str) -> str:
    with pytest.raises(DataError, match=pattern) as err:
        load_data(c)
    message = str(err.value)
    assert isinstance(err.value, ConfigError) and "\n" not in message
    return message


def test_missing_root_and_split_folders(tmp_path: Path, copy: Path) -> None:
    refused(config(tmp_path / "nowhere"), r"^data_dir: got '.*nowhere' \(no such folder\); allowed")
    shutil.rmtree(copy / "val")
    refused(config(copy), r"^data_dir: got .* with no val/ folder; allowed: .*train/<class>/")


def test_empty_class_folder(copy: Path) -> None:
    (copy / "train" / "emu").mkdir()
    (copy / "train" / "emu" / "notes.txt").write_text("not an image")
    (copy / "train" / ".ipynb_checkpoints").mkdir()  # hidden: not a class
    message = refused(config(copy), r"^data_dir: got '.*emu' with no images; allowed: ")
    assert ".jpg" in message


def test_single_class(copy: Path) -> None:
    for c in CLASSES[1:]:
        shutil.rmtree(copy / "train" / c)
        shutil.rmtree(copy / "val" / c)
    refused(config(copy), r"^data_dir: got .* with a single class folder \('cat'\)")


def test_val_class_missing_from_train(copy: Path) -> None:
    shutil.copytree(copy / "val" / "fox", copy / "val" / "owl")
    refused(config(copy), r"^data_dir: got .*val' with 1 class folders not in train/ \(owl\)")


def test_unreadable_image_is_refused_before_training(copy: Path) -> None:
    bad = copy / "val" / "dog" / "dog_005.jpg"
    bad.write_bytes(b"this is not a JPEG at all")
    message = refused(config(copy), r"^data_dir: got unreadable image '.*dog_005.jpg' \(")
    assert "allowed: readable image files" in message


def test_large_datasets_check_a_seeded_sample(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import workbench.data.folders as folders

    data = load_data(config(copy, normalization="half"))
    assert data.provenance["checks"]["files_checked"] == 96  # 96 <= 50,000: all
    monkeypatch.setattr(folders, "FULL_CHECK_LIMIT", 50)
    monkeypatch.setattr(folders, "CHECK_SAMPLE", 20)
    checks = check_images([data.train, data.test], workers=2)
    assert checks["files_checked"] == 20 and "sample of 20 of 96 files" in checks["image_headers"]
    bad = Path(data.test.path(23))  # the very last file: the offsets into the splits hold
    bad.write_bytes(b"garbage")
    monkeypatch.setattr(folders, "CHECK_SAMPLE", 96)
    with pytest.raises(
        DataError, match=f"^data_dir: got unreadable image {re.escape(repr(str(bad)))}"
    ):
        check_images([data.train, data.test], workers=2)


def test_corrupt_image_found_mid_run_names_the_file(copy: Path) -> None:
    c = config(copy, augment="none")
    data = load_data(c)  # every file was fine at the check
    victim = Path(data.train.path(40))
    victim.write_bytes(victim.read_bytes()[:200])  # now a truncated image
    train, _ = make_batches(data, c, CPU)
    with pytest.raises(DataError) as err:
        for _ in train:
            pass
    message = str(err.value)
    assert message.startswith(f"data_dir: got unreadable image {str(victim)!r} while reading")
    assert "\n" not in message and "allowed: readable image files" in message
    assert no_workers_left()  # the workers ended with the error


# -- determinism ---------------------------------------------------------------------------------
def epoch(batches: StreamedBatches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*batches)
    return torch.cat(xs), torch.cat(ys)


def test_epochs_repeat_with_the_seed_whatever_the_workers(folder: Path) -> None:
    c = config(folder, image_size=16, normalization="half")
    data = load_data(c)
    first, _ = make_batches(data, c, CPU)
    a0, a1 = epoch(first), epoch(first)
    assert not torch.equal(a0[1], a1[1])  # a new order each epoch
    again, _ = make_batches(data, c.replace(data_workers=1), CPU)
    b0 = epoch(again)
    assert torch.equal(a0[0], b0[0]) and torch.equal(a0[1], b0[1])  # same crops, 1 or 2 workers
    resumed, _ = make_batches(data, c, CPU)
    resumed.epoch = 1  # as the engine does when it resumes after one epoch
    order, _ = resumed.next_epoch()
    assert torch.equal(data.train_y[order], a1[1])
    resumed.epoch = 1
    r1 = epoch(resumed)
    assert torch.equal(r1[0], a1[0]) and torch.equal(r1[1], a1[1])
    other, _ = make_batches(data, c.replace(seed=1), CPU)
    assert not torch.equal(epoch(other)[1], a0[1])
    for batches in (first, again, resumed, other):
        batches.close()
    assert no_workers_left()


# -- a whole run ---------------------------------------------------------------------------------
def test_run_experiment_learns_the_generated_folder(folder: Path, tmp_path: Path) -> None:
    from workbench.training import run_experiment

    c = config(
        folder,
        arch="greedy-cnn",
        n_modules=2,
        width=8,
        epochs=3,
        lr=0.05,
        normalization="dataset",
        out=str(tmp_path / "run"),
    )
    summary = run_experiment(c)
    assert summary["status"] == "finished"
    assert summary["final_test_acc"] > 0.6  # chance is 1/3
    assert summary["data"]["dataset"] == "imagefolder" and summary["data"]["num_classes"] == 3
    assert no_workers_left()
