"""Streamed datasets: ImageNet-size folders of image files, read batch by batch by workers.

load_streamed() scans a folder layout (torchvision's ImageFolder, its ImageNet, Tiny ImageNet)
into lists of files and labels, refuses bad input in one line before any training, subsets it
like the in-memory datasets and estimates the normalization. make_streamed_batches() and
make_statistics_batches() then give the engine StreamedBatches (streaming.py) that share one
pool of DataLoader worker processes for the whole run: the workers decode, crop and flip each
batch with PIL, or (gpu_decode) read the files for the device to decode and augment
(device_decode.py); the device normalizes it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from workbench.config import DATASETS, NORMALIZATIONS, Config
from workbench.data import (
    DataError,
    _balanced_indices,
    _one_line,
    evaluation_indices,
    subset_indices,
    subset_provenance,
    test_split_description,
)
from workbench.data.device_decode import EncodedReader, decodes_on_device
from workbench.data.streaming import (
    EpochKeys,
    FileList,
    PixelReader,
    ReaderPool,
    StreamedBatches,
    build_transform,
    read_with_own_workers,
    transform_specs,
    transforms,
    worker_count,
)

FULL_CHECK_LIMIT = 50_000  # up to this many files, every header is checked before training
CHECK_SAMPLE = 2_000  # above it, a seeded sample this big (the rest fail when read, by name)
STATS_SAMPLE = 2_000  # normalization "dataset": training images the mean and std come from
# fixed, not the run's seed: runs of every seed see the same normalization and checked sample
SAMPLE_SEED = 0
EXTENSIONS = ", ".join(IMG_EXTENSIONS)
FOLDER_LAYOUT = "a folder holding train/<class>/ and val/<class>/ folders of images"
IMAGENET_LAYOUT = (
    f"{FOLDER_LAYOUT} (torchvision.datasets.ImageNet(root, split='train' and 'val') prepares "
    "them from the ILSVRC2012 archives)"
)
TINY_LAYOUT = (
    "a folder holding tiny-imagenet-200/ (or its contents: wnids.txt, train/<wnid>/images/, "
    "val/images/ and val/val_annotations.txt)"
)


@dataclass
class StreamedData:
    """A dataset read from image files as it trains: the file lists, not the pixels."""

    train: FileList
    test: FileList
    num_classes: int
    classes: list[str]  # class folder names (ImageNet's wnids); label i is classes[i]
    class_names: list[str]  # human-readable names where the dataset has them (ImageNet)
    mean: tuple[float, ...]  # per channel, of pixel / 255 (estimated from a training sample)
    std: tuple[float, ...]
    provenance: dict[str, Any]  # JSON-serialisable: where the data came from and how much
    # the loader worker pools its batches share (one per run: see shared_pool)
    pools: dict[tuple, ReaderPool] = field(default_factory=dict, repr=False, compare=False)

    @property
    def train_y(self) -> Tensor:
        return self.train.labels

    @property
    def test_y(self) -> Tensor:
        return self.test.labels


# -- scanning the layouts -----------------------------------------------------------------------
def _folder(parent: Path, name: str, layout: str) -> Path:
    folder = parent / name
    if not folder.is_dir():
        raise DataError(f"data_dir: got {str(parent)!r} with no {name}/ folder; allowed: {layout}")
    return folder


def _class_folders(folder: Path) -> list[str]:
    """Sorted sub-folder names; hidden ones (.ipynb_checkpoints and the like) are no classes."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _check_classes(folder: Path, classes: list[str], layout: str) -> None:
    if not classes:
        raise DataError(f"data_dir: got {str(folder)!r} with no class folders; allowed: {layout}")
    if len(classes) == 1:
        raise DataError(
            f"data_dir: got {str(folder)!r} with a single class folder ({classes[0]!r}); "
            f"allowed: at least 2 class folders ({layout})"
        )


def _files(folder: Path, index: dict[str, int]) -> FileList:
    """torchvision's ImageFolder scan of folder/<class>/**, with the given class indices.

    Every class folder named in `index` must hold at least one image.
    """
    root = str(folder)
    samples = make_dataset(root, index, extensions=IMG_EXTENSIONS, allow_empty=True)
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    counts = torch.bincount(labels, minlength=max(index.values()) + 1)
    empty = [c for c, i in sorted(index.items()) if counts[i] == 0]
    if empty:
        more = f" (and {len(empty) - 1} more empty class folders)" if len(empty) > 1 else ""
        raise DataError(
            f"data_dir: got {str(folder / empty[0])!r} with no images{more}; "
            f"allowed: class folders holding image files ({EXTENSIONS})"
        )
    # make_dataset joins root and the relative path: strip the root again (relpath is slow)
    return FileList.of(root, [p[len(root) + 1 :] for p, _ in samples], labels.tolist())


def _scan_imagefolder(
    root: Path, layout: str
) -> tuple[list[str], FileList, FileList, dict[str, Any]]:
    """ROOT/train/<class>/* and ROOT/val/<class>/*: classes are train's, val uses its indices."""
    train_dir = _folder(root, "train", layout)
    val_dir = _folder(root, "val", layout)
    classes = _class_folders(train_dir)
    _check_classes(train_dir, classes, layout)
    val_classes = _class_folders(val_dir)
    if not val_classes:  # e.g. ImageNet's val images still loose, not sorted into wnid folders
        raise DataError(
            f"data_dir: got {str(val_dir)!r} with no class folders; allowed: val/<class>/ "
            "folders of images (torchvision.datasets.ImageNet(root, split='val') sorts "
            "ImageNet's validation images into them)"
        )
    unknown = sorted(set(val_classes) - set(classes))
    if unknown:
        raise DataError(
            f"data_dir: got {str(val_dir)!r} with {len(unknown)} class folders not in train/ "
            f"({', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}); allowed: val/ "
            "class folders that train/ also has"
        )
    index = {c: i for i, c in enumerate(classes)}
    train = _files(train_dir, index)
    test = _files(val_dir, {c: index[c] for c in val_classes})
    return classes, train, test, {"layout": "ImageFolder: train/<class>/, val/<class>/"}


def _scan_tiny_imagenet(root: Path) -> tuple[list[str], FileList, FileList, dict[str, Any]]:
    """The official Tiny ImageNet: train/<wnid>/images/*.JPEG, val/images + val_annotations.txt."""
    base = root if (root / "wnids.txt").is_file() else root / "tiny-imagenet-200"
    if not base.is_dir():
        raise DataError(
            f"data_dir: got {str(root)!r} with neither tiny-imagenet-200/ nor wnids.txt; "
            f"allowed: {TINY_LAYOUT}"
        )
    train_dir = _folder(base, "train", TINY_LAYOUT)
    val_dir = _folder(base, "val", TINY_LAYOUT)
    classes = _class_folders(train_dir)
    _check_classes(train_dir, classes, TINY_LAYOUT)
    wnids_file = base / "wnids.txt"
    if wnids_file.is_file():
        wnids = sorted(w for w in wnids_file.read_text().split() if w)
        if wnids != classes:
            differ = sorted(set(wnids) ^ set(classes))
            raise DataError(
                f"data_dir: got {str(train_dir)!r} whose class folders differ from wnids.txt "
                f"({', '.join(differ[:5])}{', ...' if len(differ) > 5 else ''}); allowed: one "
                "train/<wnid>/ folder for each wnid in wnids.txt"
            )
    index = {c: i for i, c in enumerate(classes)}
    train = _files(train_dir, index)  # ImageFolder's scan recurses into <wnid>/images/
    annotations = val_dir / "val_annotations.txt"
    images = val_dir / "images"
    if not annotations.is_file() or not images.is_dir():
        raise DataError(
            f"data_dir: got {str(val_dir)!r} without val_annotations.txt and images/; "
            f"allowed: {TINY_LAYOUT}"
        )
    files, labels, unknown, missing = [], [], set(), []
    for line in annotations.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0].strip():
            continue  # blank lines; the bounding boxes after the wnid are not needed
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            unknown.add(wnid)
        elif not (images / name).is_file():
            missing.append(name)
        else:
            files.append(name)
            labels.append(index[wnid])
    if unknown:
        raise DataError(
            f"data_dir: got {str(annotations)!r} naming classes not in train/ "
            f"({', '.join(sorted(unknown)[:5])}); allowed: val classes that train/ also has"
        )
    if missing or not files:
        what = f"{len(missing)} files missing from val/images/ ({missing[0]}, ...)"
        raise DataError(
            f"data_dir: got {str(annotations)!r} {what if missing else 'naming no images'}; "
            f"allowed: {TINY_LAYOUT}"
        )
    layout = "Tiny ImageNet: train/<wnid>/images/, val/images/ + val_annotations.txt"
    return classes, train, FileList.of(str(images), files, labels), {"layout": layout}


def _imagenet_names(root: Path, classes: list[str]) -> tuple[list[str], str]:
    """Human-readable class names from torchvision's meta.bin, if it is there and plain data.

    torchvision.datasets.ImageNet reads the folders as an ImageFolder and meta.bin for names;
    we do the same, but index val/ by train's classes and load meta.bin with weights_only, so
    the file can hold only plain containers and strings: nothing in it can run code.
    """
    meta = root / "meta.bin"
    if not meta.is_file():
        return list(classes), "folder names (no meta.bin)"
    try:
        wnid_to_names, _ = torch.load(meta, weights_only=True)
        names = [wnid_to_names.get(w, (w,)) for w in classes]
        return [n[0] if isinstance(n, (tuple, list)) else str(n) for n in names], (
            "meta.bin (loaded with weights_only)"
        )
    except Exception as err:  # a foreign or unsafe file: the names are cosmetic, training is not
        return list(classes), f"folder names (meta.bin not used: {_one_line(err)})"


def _check_class_count(name: str, classes: list[str], folder: Path) -> None:
    """ImageNet has 1000 classes and Tiny ImageNet 200: another count is a wrong root."""
    expected = DATASETS[name].num_classes
    if len(classes) != expected:
        raise DataError(
            f"data_dir: got {str(folder)!r} with {len(classes)} class folders for {name}; "
            f"allowed: {name}'s {expected} (dataset imagefolder reads any class set laid out as "
            "train/<class>/ and val/<class>/)"
        )


# -- checks and statistics ----------------------------------------------------------------------
def _header_problem(path: str) -> str | None:
    """Why PIL cannot open and verify this file's header, or None if it can (no decoding)."""
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as err:
        return _one_line(err)
    return None


def check_images(splits: Sequence[FileList], workers: int) -> dict[str, Any]:
    """Open and verify the headers of the splits' files: all, or a seeded sample above 50,000.

    Returns the check's provenance; an unreadable file is a DataError naming it.
    """
    total = sum(len(files) for files in splits)
    if total <= FULL_CHECK_LIMIT:
        picks = list(range(total))
        text = f"every image's header opened and verified with PIL ({total} files)"
    else:
        gen = torch.Generator().manual_seed(SAMPLE_SEED)
        picks = torch.randperm(total, generator=gen)[:CHECK_SAMPLE].sort().values.tolist()
        text = (
            f"headers of a seeded sample of {CHECK_SAMPLE} of {total} files (seed "
            f"{SAMPLE_SEED}) opened and verified with PIL; the rest are checked as they are read"
        )
    # picks index the splits one after the other
    offsets = np.cumsum([0] + [len(files) for files in splits])
    chosen = []
    for i in picks:
        split = int(np.searchsorted(offsets, i, side="right")) - 1
        chosen.append(splits[split].path(i - int(offsets[split])))
    # threads, not processes: opening a header is mostly waiting on the file system
    with ThreadPoolExecutor(max_workers=max(4, 2 * workers)) as pool:
        problems = [(p, r) for p, r in zip(chosen, pool.map(_header_problem, chosen)) if r]
    if problems:
        path, reason = problems[0]
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise DataError(
            f"data_dir: got unreadable image {path!r} ({reason}){more}; allowed: readable image "
            "files (replace or remove them)"
        )
    return {"image_headers": text, "files_checked": len(chosen)}


def estimate_stats(
    files: FileList, transform: Callable[[Image.Image], Tensor], workers: int
) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """Per-channel mean and std of pixel / 255 over a class-balanced sample of up to 2,000 files.

    Returns (mean, std, images used). Exact over the sample: 256-bin histograms, no float copy.
    """
    n = min(STATS_SAMPLE, len(files))
    sample = files.subset(_balanced_indices(files.labels, n, SAMPLE_SEED))
    counts: Tensor | None = None
    keys = EpochKeys(sample, list(torch.arange(n).split(64)), "stats", seed=0)
    reader = PixelReader({"stats": transform})  # before training: workers of its own
    for x in read_with_own_workers(reader, keys, workers=workers, pin=False):
        channels = x.transpose(0, 1).reshape(x.shape[1], -1)
        hist = torch.stack([torch.bincount(c, minlength=256) for c in channels]).double()
        counts = hist if counts is None else counts + hist
    assert counts is not None  # n >= 1: every split holds images (checked when scanned)
    p = counts / counts.sum(1, keepdim=True)
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = (p * values).sum(1)
    std = (p * (values - mean[:, None]) ** 2).sum(1).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist()), n


# -- the two entry points -----------------------------------------------------------------------
def load_streamed(config: Config) -> StreamedData:
    """Scan config.dataset's folders under config.data_dir, check them, subset, normalize.

    Everything that can be refused is refused here, in one line, before any training: a
    missing root or split folder, empty class folders, a single class, val classes train has
    not, the wrong class count for ImageNet / Tiny ImageNet, an unreadable image header.
    """
    name = config.dataset
    root = Path(config.data_dir).expanduser()
    layout = {"tiny-imagenet": TINY_LAYOUT, "imagenet": IMAGENET_LAYOUT}.get(name, FOLDER_LAYOUT)
    if not root.is_dir():
        raise DataError(f"data_dir: got {str(root)!r} (no such folder); allowed: {layout}")
    if name == "tiny-imagenet":
        classes, train, test, source = _scan_tiny_imagenet(root)
    else:
        classes, train, test, source = _scan_imagefolder(root, layout)
    if name != "imagefolder":
        _check_class_count(name, classes, Path(train.root))
    class_names, names_from = list(classes), "folder names"
    if name == "imagenet":
        class_names, names_from = _imagenet_names(root, classes)
    full_train = train
    available = {"train_available": len(train), "test_available": len(test)}
    train = train.subset(subset_indices(train.labels, config.n_train, "n_train", config))
    test = test.subset(subset_indices(test.labels, config.n_test, "n_test", config))
    split = test_split_description(len(test), config)
    test = test.subset(evaluation_indices(len(test), config))

    # the device the run will have (torchrun's ranks: a GPU each, where there are GPUs)
    device = "cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu"
    on_device = decodes_on_device(config, device)  # gpu_decode true on a CPU run: refused now
    workers = worker_count(config, device)
    checks = {
        "layout": "split folders present, every class folder holds images, at least 2 classes, "
        "test classes are training classes",
        **check_images([train, test], workers),
    }
    _, test_transform, transform_text = transforms(config)
    normalization: dict[str, Any] = {"name": config.normalization}
    stats = NORMALIZATIONS[config.normalization]
    if stats is None:  # "dataset": what the model sees, from the whole training set
        mean, std, used = estimate_stats(full_train, test_transform, workers)
        normalization["estimated_from"] = (
            f"{used} training images (a class-balanced sample drawn with seed {SAMPLE_SEED}, "
            "at the test transform)"
        )
    else:
        mean, std = stats
    normalization.update(mean=mean, std=std)

    provenance: dict[str, Any] = {"dataset": name, "source": str(root.resolve()), **source}
    provenance.update(num_classes=len(classes), class_names_from=names_from)
    if len(classes) <= 100:
        provenance["classes"] = list(classes)
    provenance.update(n_train=len(train), n_test=len(test), **available)
    provenance.update(**subset_provenance(config), test_split=split)
    provenance.update(normalization=normalization, checks=checks, image_size=config.input_size)
    provenance.update(augment=config.resolved_augment, **transform_text, data_workers=workers)
    provenance["decode"] = EncodedReader.how if on_device else PixelReader.how
    return StreamedData(train, test, len(classes), classes, class_names, mean, std, provenance)


def shared_pool(data: StreamedData, config: Config, device: torch.device) -> ReaderPool:
    """The run's one pool of loader workers: its training, test and statistics batches share it.

    Kept on `data`, which all three are made from, by what the workers do (transforms, decoder,
    worker count, device); the provenance says how many workers and where images are decoded.
    """
    device = torch.device(device)
    on_device = decodes_on_device(config, device)
    workers = worker_count(config, device)
    train, test = transform_specs(config)
    key = (train, test, on_device, workers, str(device))
    if key not in data.pools:
        specs = {"train": train, "test": test}
        reader: EncodedReader | PixelReader
        if on_device:
            reader = EncodedReader(specs)
        else:
            reader = PixelReader({name: build_transform(spec) for name, spec in specs.items()})
        data.pools[key] = ReaderPool(reader, workers=workers, pin=device.type == "cuda")
    data.provenance.update(data_workers=workers, decode=data.pools[key].reader.how)
    return data.pools[key]


def make_streamed_batches(
    data: StreamedData, config: Config, device: torch.device, eval_batch_size: int
) -> tuple[StreamedBatches, StreamedBatches]:
    """The training batches (shuffled, augmented, seeded by config.seed) and the test batches."""
    common: dict[str, Any] = dict(
        pool=shared_pool(data, config, device),
        batch_size=config.batch_size,
        device=device,
        mean=data.mean,
        std=data.std,
    )
    train = StreamedBatches(data.train, transform="train", shuffle=True, seed=config.seed, **common)
    common["batch_size"] = eval_batch_size
    return train, StreamedBatches(data.test, transform="test", **common)


def make_statistics_batches(
    data: StreamedData, config: Config, device: torch.device, keep: Tensor
) -> StreamedBatches:
    """The training images at `keep`, test transform, in order (for BatchNorm re-estimates),
    read by the same workers as the run's training and test batches."""
    return StreamedBatches(
        data.train.subset(keep),
        pool=shared_pool(data, config, device),
        transform="test",
        batch_size=config.batch_size,
        device=device,
        mean=data.mean,
        std=data.std,
    )
