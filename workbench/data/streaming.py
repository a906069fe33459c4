"""Reading streamed datasets: file lists, the papers' transforms, and batches decoded by workers.

StreamedBatches decodes, crops and flips each batch in DataLoader worker processes (uint8
tensors, each image's augmentation seeded from the epoch and its index) and normalizes it on
the device. It serves the engine the same interface as the in-memory Batches: len, iteration,
batch_size, epoch, y and next_epoch(). `folders.py` finds the files and checks them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from workbench.config import Config
from workbench.data import DataError, _epoch_seed, _one_line

MAX_WORKERS = 8  # data_workers=0: one worker per CPU core, at most this many
CROP_PADDING = 4  # crop-flip: pixels of zero padding the random crop shifts within (TRGL)


# -- file lists ---------------------------------------------------------------------------------
@dataclass
class FileList:
    """Image files under one root folder and their labels, in a fixed (dataset) order.

    The paths live in one fixed-width numpy byte array, not a list of Python strings: forked
    workers touching a million strings' reference counts would each copy the list's memory.
    """

    root: str
    paths: np.ndarray  # dtype S: paths relative to root, os.fsencode'd
    labels: Tensor  # int64

    @classmethod
    def of(cls, root: str, relative: Sequence[str], labels: Sequence[int]) -> FileList:
        encoded = [os.fsencode(p) for p in relative]
        paths = np.array(encoded, dtype=np.bytes_) if encoded else np.empty(0, dtype="S1")
        return cls(root, paths, torch.tensor(list(labels), dtype=torch.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.paths[i]))

    def subset(self, keep: Tensor | None) -> FileList:
        """The files at indices `keep` (in that order); None keeps them all."""
        if keep is None:
            return self
        return FileList(self.root, self.paths[keep.numpy()], self.labels[keep])


# -- transforms ---------------------------------------------------------------------------------
def transforms(config: Config) -> tuple[v2.Compose, v2.Compose, dict[str, str]]:
    """(training transform, test transform, their descriptions): PIL image -> uint8 C x H x W.

    The papers' recipes: resized-crop-flip is ImageNet's RandomResizedCrop + flip, tested on the
    centre crop after resizing by 256/224; crop and crop-flip (Tiny ImageNet, TRGL) see the
    whole image at image_size (resized only if it is not that size) and pad-crop it; none
    trains on the test transform. With augment none, ImageNet-style datasets keep their
    resize-and-centre-crop test transform.
    """
    s, augment = config.input_size, config.resolved_augment
    imagenet_style = augment == "resized-crop-flip" or (
        augment == "none" and config.dataset_info.augment == "resized-crop-flip"
    )
    to_tensor = v2.PILToTensor()  # uint8: the device converts and normalizes
    if imagenet_style:
        resize = round(s * 256 / 224)
        test = v2.Compose([v2.Resize(resize), v2.CenterCrop(s), to_tensor])
        test_text = f"Resize({resize}) + CenterCrop({s})"
    else:  # Resize(s) resizes the short side; both are no-ops on s x s images
        test = v2.Compose([v2.Resize(s), v2.CenterCrop(s), to_tensor])
        test_text = f"Resize({s}) + CenterCrop({s}) (no-ops on {s}x{s} images)"
    flip = [v2.RandomHorizontalFlip()] if augment.endswith("flip") else []
    if augment == "resized-crop-flip":
        train = v2.Compose([v2.RandomResizedCrop(s), *flip, to_tensor])
        train_text = f"RandomResizedCrop({s}) + horizontal flip"
    elif augment in ("crop", "crop-flip"):
        crop = v2.RandomCrop(s, padding=CROP_PADDING)
        train = v2.Compose([v2.Resize(s), v2.CenterCrop(s), crop, *flip, to_tensor])
        train_text = f"{test_text} + RandomCrop({s}, padding={CROP_PADDING})"
        train_text += " + horizontal flip" if flip else ""
    else:
        train, train_text = test, test_text
    return train, test, {"train_transform": train_text, "test_transform": test_text}


# -- reading batches in workers -----------------------------------------------------------------
@dataclass
class Unreadable:
    """What a worker returns for a batch holding a file it cannot decode (not an exception:
    the DataLoader would wrap that in a multi-line traceback; this crosses as plain data)."""

    path: str
    reason: str


def _load_rgb(path: str) -> Image.Image:
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")  # decodes now: a truncated file fails here


class _BatchReader(Dataset):
    """Decodes and transforms one whole batch per item; a key is (indices, epoch seed).

    Each image's random crop and flip come from a generator seeded by (epoch seed, index), so
    a batch is the same whichever worker, how many workers, and whether the run was resumed.
    """

    def __init__(self, files: FileList, transform: Callable[[Image.Image], Tensor]):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[list[int], int]) -> tuple[Tensor, Tensor] | Unreadable:
        indices, seed = key
        images = []
        for i in indices:
            path = self.files.path(i)
            try:
                image = _load_rgb(path)
            except Exception as err:  # PIL fails as OSError, SyntaxError, ValueError, ...
                return Unreadable(path, _one_line(err))
            # v2 transforms draw from torch's global CPU generator; fork_rng puts it back, so
            # reading in the main process (no workers) leaves the caller's random state alone
            with torch.random.fork_rng(devices=[]):
                torch.random.default_generator.manual_seed(_image_seed(seed, i))
                images.append(self.transform(image))
        return torch.stack(images), self.files.labels[indices]


def _image_seed(epoch_seed: int, index: int) -> int:
    # a large odd multiplier (2^64 / golden ratio): epoch e's image i and epoch e + 1's image j
    # never share a seed, even past a million images (epoch seed * 1_000_003 + i would)
    return (epoch_seed * 0x9E3779B97F4A7C15 + index) % 2**64


def _uint8_batches(
    files: FileList,
    transform: Callable[[Image.Image], Tensor],
    order: Tensor,
    *,
    batch_size: int,
    seed: int,
    workers: int,
    pin: bool,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[Tensor, Tensor]]:
    """uint8 image batches and labels of `files` in `order`, decoded by worker processes;
    with `shard` (rank, ranks) only that rank's slice of each batch (torchrun's processes)."""
    rank, ranks = shard
    keys = [(chunk.tensor_split(ranks)[rank].tolist(), seed) for chunk in order.split(batch_size)]
    # batch_size=None: each key is a whole batch, read and stacked inside one worker
    loader = DataLoader(
        _BatchReader(files, transform),
        batch_size=None,
        sampler=keys,
        num_workers=min(workers, len(keys)),
        pin_memory=pin,
        generator=torch.Generator().manual_seed(seed),  # the workers' base seed
    )
    batches = iter(loader)
    try:
        for item in batches:
            if isinstance(item, Unreadable):
                raise DataError(
                    f"data_dir: got unreadable image {item.path!r} while reading batches "
                    f"({item.reason}); allowed: readable image files (replace or remove it, "
                    "then run again: the run resumes)"
                )
            yield item
    finally:
        # end the workers now (an error, or a run stopped mid-epoch), not when the iterator
        # happens to be garbage collected
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def worker_count(config: Config) -> int:
    """config.data_workers, or one worker per CPU core this process may use (at most 8)."""
    if config.data_workers:
        return config.data_workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, MAX_WORKERS))


class StreamedBatches:
    """Batches of (normalized float images, labels) on the device, read from files each epoch.

    Workers decode and crop uint8 images; the device normalizes them, as Batches does. Each
    iteration is an epoch: its order is drawn on the CPU from (seed, epoch) like Batches, and
    each image's augmentation from (epoch seed, index), so a rerun with the same seed, or a
    resumed run that sets `epoch`, sees the same batches.
    """

    resident = False  # the in-memory Batches' flag: these images never sit on the device

    def __init__(
        self,
        files: FileList,
        *,
        transform: Callable[[Image.Image], Tensor],
        batch_size: int,
        device: torch.device,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        seed: int = 0,
        workers: int = 1,
    ) -> None:
        self.files, self.transform = files, transform
        self.batch_size, self.device = batch_size, torch.device(device)
        self.shuffle, self.seed, self.workers, self.epoch = shuffle, seed, workers, 0
        self.shard = (0, 1)  # (rank, ranks): the slice of each batch read (training/distributed)
        self.y = files.labels  # every label, CPU int64, in dataset order
        # x / 255 normalized is one multiply-add: x * scale + shift, per channel
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._scale = (1 / (255 * std_t)).to(self.device)
        self._shift = (-mean_t / std_t).to(self.device)

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)  # the last, partial batch counts

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        # the epoch advances here, not when the generator first runs, so iter() alone counts
        order, seed = self.next_epoch()
        return self._epoch_batches(order, seed)

    def next_epoch(self) -> tuple[Tensor | None, int]:
        """Advance to the next epoch: (its example order, None for storage order; its seed)."""
        self.epoch += 1
        seed = _epoch_seed(self.seed, self.epoch - 1)
        if not self.shuffle:
            return None, seed
        return torch.randperm(len(self.y), generator=torch.Generator().manual_seed(seed)), seed

    def _epoch_batches(self, order: Tensor | None, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        batches = _uint8_batches(
            self.files,
            self.transform,
            torch.arange(len(self.y)) if order is None else order,
            batch_size=self.batch_size,
            seed=seed,
            workers=self.workers,
            pin=self.device.type == "cuda",
            shard=self.shard,
        )
        for x, y in batches:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            yield x.float().mul_(self._scale).add_(self._shift), y
