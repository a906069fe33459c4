"""Reading streamed datasets: file lists, the papers' transforms, and one run's loader workers.

A ReaderPool holds a run's DataLoader worker processes for the whole run (persistent_workers):
its training, test and BatchNorm-statistics batches are read by the same workers, one epoch
after another. Each batch is a key naming its files, transform and epoch seed; each image's
crop and flip is seeded by (epoch seed, index). The workers decode, crop and flip with PIL
(PixelReader, here), or only read the files for the device to decode (device_decode.py).
StreamedBatches serves the engine the interface of the in-memory Batches (data.BatchSource).
`folders.py` finds the files, checks them and builds the pool.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from workbench.config import Config
from workbench.data import CROP_PADDING, BatchSource, DataError, _one_line

MAX_CPU_WORKERS = 8  # data_workers=0 on the CPU: one worker per core, at most this many


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
@dataclass(frozen=True)
class TransformSpec:
    """One of the papers' transforms as numbers: the PIL path's v2 transforms (build_transform)
    and the device path's per-image plans (device_decode.Planner) are both built from it."""

    size: int  # the output's height and width
    resize: int  # the short side is first resized to this (then centre-cropped); unused below
    resized_crop: bool  # instead: RandomResizedCrop(size) of the whole image
    pad_crop: int  # after the centre crop, RandomCrop(size, padding=pad_crop); 0: none
    flip: bool  # then a random horizontal flip
    text: str  # for the provenance


def transform_specs(config: Config) -> tuple[TransformSpec, TransformSpec]:
    """(training, test) transforms: the papers' recipes.

    Resized-crop-flip is ImageNet's RandomResizedCrop + flip, tested on the centre crop after
    resizing by 256/224; crop and crop-flip (Tiny ImageNet, TRGL) see the whole image at
    image_size (resized only if it is not that size) and pad-crop it; none trains on the test
    transform. With augment none, ImageNet-style datasets keep their resize-and-centre-crop.
    """
    s, augment = config.input_size, config.resolved_augment
    imagenet_style = augment == "resized-crop-flip" or (
        augment == "none" and config.dataset_info.augment == "resized-crop-flip"
    )
    if imagenet_style:
        resize = round(s * 256 / 224)
        test = TransformSpec(s, resize, False, 0, False, f"Resize({resize}) + CenterCrop({s})")
    else:  # Resize(s) resizes the short side; both are no-ops on s x s images
        text = f"Resize({s}) + CenterCrop({s}) (no-ops on {s}x{s} images)"
        test = TransformSpec(s, s, False, 0, False, text)
    flip = augment.endswith("flip")
    flip_text = " + horizontal flip" if flip else ""
    if augment == "resized-crop-flip":
        train = TransformSpec(s, 0, True, 0, flip, f"RandomResizedCrop({s}){flip_text}")
    elif augment in ("crop", "crop-flip"):
        text = f"{test.text} + RandomCrop({s}, padding={CROP_PADDING}){flip_text}"
        train = replace(test, pad_crop=CROP_PADDING, flip=flip, text=text)
    else:
        train = test
    return train, test


def build_transform(spec: TransformSpec) -> v2.Compose:
    """The spec as torchvision v2 transforms: PIL image -> uint8 C x H x W."""
    if spec.resized_crop:
        steps: list[Any] = [v2.RandomResizedCrop(spec.size)]
    else:
        steps = [v2.Resize(spec.resize), v2.CenterCrop(spec.size)]
    if spec.pad_crop:
        steps.append(v2.RandomCrop(spec.size, padding=spec.pad_crop))
    if spec.flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([*steps, v2.PILToTensor()])  # uint8: the device converts and normalizes


def transforms(config: Config) -> tuple[v2.Compose, v2.Compose, dict[str, str]]:
    """(training transform, test transform, their descriptions): see transform_specs."""
    train, test = transform_specs(config)
    texts = {"train_transform": train.text, "test_transform": test.text}
    return build_transform(train), build_transform(test), texts


# -- reading batches in workers -----------------------------------------------------------------
class BatchKey(NamedTuple):
    """What a worker is sent for one batch: its files, which transform, and the epoch's seed."""

    transform: str  # a name the reader knows ("train", "test")
    paths: list[str]
    indices: list[int]  # each file's index in its list: with the seed, its augmentation's seed
    seed: int


@dataclass
class Unreadable:
    """What a worker returns for a batch holding a file it cannot decode (not an exception:
    the DataLoader would wrap that in a multi-line traceback; this crosses as plain data)."""

    path: str
    reason: str


def unreadable_error(path: str, reason: str) -> DataError:
    return DataError(
        f"data_dir: got unreadable image {path!r} while reading batches ({reason}); allowed: "
        "readable image files (replace or remove it, then run again: the run resumes)"
    )


def _image_seed(epoch_seed: int, index: int) -> int:
    # a large odd multiplier (2^64 / golden ratio): epoch e's image i and epoch e + 1's image j
    # never share a seed, even past a million images (epoch seed * 1_000_003 + i would)
    return (epoch_seed * 0x9E3779B97F4A7C15 + index) % 2**64


@contextlib.contextmanager
def image_random_state(epoch_seed: int, index: int) -> Iterator[None]:
    """torch's global CPU generator seeded for one image, put back afterwards.

    v2 transforms draw from the global generator; fork_rng restores it, so reading in the main
    process (no workers) leaves the caller's random state alone.
    """
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(_image_seed(epoch_seed, index))
        yield


def _load_rgb(path: str) -> Image.Image:
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")  # decodes now: a truncated file fails here


class PixelReader(Dataset):
    """Decodes and transforms one whole batch per key with PIL, in the worker: uint8 N x C x H x W.

    Each image's random crop and flip come from a generator seeded by (epoch seed, index), so
    a batch is the same whichever worker, how many workers, and whether the run was resumed.
    """

    how = "workers (PIL): decoded, cropped and flipped in the DataLoader workers"

    def __init__(self, transforms: dict[str, Callable[[Image.Image], Tensor]]):
        self.transforms = transforms

    def __getitem__(self, key: BatchKey) -> Tensor | Unreadable:
        transform, images = self.transforms[key.transform], []
        for path, i in zip(key.paths, key.indices):
            try:
                image = _load_rgb(path)
            except Exception as err:  # PIL fails as OSError, SyntaxError, ValueError, ...
                return Unreadable(path, _one_line(err))
            with image_random_state(key.seed, i):
                images.append(transform(image))
        return torch.stack(images)

    def finish(self, images: Tensor, device: torch.device) -> Tensor:
        """A worker's batch as the uint8 images on the device (the main process's part)."""
        return images.to(device, non_blocking=True)


@dataclass
class EpochKeys:
    """One epoch's batch keys, each built when the DataLoader asks for it (an ImageNet epoch's
    million path strings never sit in memory at once)."""

    files: FileList
    chunks: list[Tensor]  # each batch's indices into files (this rank's slice of it)
    transform: str
    seed: int

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, j: int) -> BatchKey:
        indices = self.chunks[j].tolist()
        return BatchKey(self.transform, [self.files.path(i) for i in indices], indices, self.seed)


class _KeySampler:
    """A DataLoader's sampler: the keys of whichever epoch it reads, from `start` on. The
    DataLoader iterates its sampler again at each iter(), so a persistent DataLoader reads a
    new epoch once `keys` is set to it."""

    def __init__(self, keys: Sequence[BatchKey] = (), start: int = 0):
        self.keys, self.start = keys, start

    def __iter__(self) -> Iterator[BatchKey]:
        keys, start = self.keys, self.start
        return (keys[j] for j in range(start, len(keys)))

    def __len__(self) -> int:
        return max(0, len(self.keys) - self.start)


def _worker_seeds() -> torch.Generator:
    # the workers' base seed, drawn from this generator and not from torch's global one: reading
    # leaves the caller's random state alone (each image is seeded by itself anyway)
    return torch.Generator().manual_seed(0)


def read_with_own_workers(
    reader: Dataset, keys: Sequence[BatchKey], *, workers: int, pin: bool, start: int = 0
) -> Iterator[Any]:
    """The reader's items for keys[start:], from worker processes started for them alone and
    ended when the iteration ends (an error, or a consumer that stops early, included)."""
    loader = DataLoader(
        reader,
        batch_size=None,  # each key is a whole batch, read and stacked inside one worker
        sampler=_KeySampler(keys, start),
        num_workers=max(1, min(workers, len(keys) - start)),
        pin_memory=pin,
        generator=_worker_seeds(),
    )
    items = iter(loader)
    try:
        for item in items:
            if isinstance(item, Unreadable):
                raise unreadable_error(item.path, item.reason)
            yield item
    finally:  # now, not when the iterator happens to be garbage collected
        shutdown = getattr(items, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


class ReaderPool:
    """One run's loader worker processes, kept from epoch to epoch and shared by its batches.

    A persistent DataLoader (persistent_workers=True) over `reader` whose sampler is pointed
    at each epoch's keys in turn: the workers start at the first epoch and stay until close().
    The epoch read last owns them; its iter() drains whatever an abandoned epoch left in
    flight (the DataLoader's own reset). An older epoch still being read (two iterated at once,
    say) reads the rest of its batches with workers of its own, so each epoch is right either
    way. An unreadable file raises a DataError naming it and ends the workers.
    """

    def __init__(self, reader: Any, *, workers: int, pin: bool):
        self.reader, self.workers, self.pin = reader, workers, pin
        self._sampler = _KeySampler()
        self._loader: DataLoader | None = None
        self._owner: object | None = None  # the epoch the persistent workers read for

    def batches(self, keys: EpochKeys) -> Iterator[Any]:
        """The workers' items for `keys`, in order (the reader's `finish` makes them batches)."""
        epoch = object()
        self._owner = epoch
        self._sampler.keys, self._sampler.start = keys, 0
        items = self._guarded(lambda: iter(self._persistent_loader()))  # drains an earlier epoch
        for j in range(len(keys)):
            if self._owner is not epoch:  # a later epoch (or close) took the workers
                yield from self._checked(
                    read_with_own_workers(
                        self.reader, keys, workers=self.workers, pin=self.pin, start=j
                    )
                )
                return
            item = self._guarded(lambda: next(items))
            if isinstance(item, Unreadable):
                self.close()
                raise unreadable_error(item.path, item.reason)
            yield item

    def _guarded(self, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except BaseException:  # a worker's error or an interrupt: start afresh next time
            self.close()
            raise

    def _checked(self, items: Iterator[Any]) -> Iterator[Any]:
        try:
            yield from items
        except DataError:
            self.close()
            raise

    def finish(self, item: Any, device: torch.device) -> Tensor:
        """A worker's item as the uint8 image batch on the device."""
        try:
            return self.reader.finish(item, device)
        except DataError:  # a file only the device's decoder found unreadable
            self.close()
            raise

    def _persistent_loader(self) -> DataLoader:
        if self._loader is None:
            self._loader = DataLoader(
                self.reader,
                batch_size=None,  # each key is a whole batch, read and stacked in one worker
                sampler=self._sampler,
                num_workers=self.workers,
                pin_memory=self.pin,
                persistent_workers=True,
                generator=_worker_seeds(),
            )
        return self._loader

    def close(self) -> None:
        """End the worker processes now (idempotent); a later epoch starts new ones."""
        loader, self._loader, self._owner = self._loader, None, None
        iterator = getattr(loader, "_iterator", None)
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(config: Config, device: torch.device | str) -> int:
    """config.data_workers, or (0) one loader worker per usable core.

    On the CPU at most 8: training needs the cores too. On CUDA no cap, but one core is left
    to the main process (it feeds the GPU) when there are more than 2, and torchrun's processes
    on one machine (LOCAL_WORLD_SIZE) share its cores.
    """
    if config.data_workers:
        return config.data_workers
    cores = usable_cores()
    if torch.device(device).type != "cuda":
        return max(1, min(cores, MAX_CPU_WORKERS))
    cores = max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))
    return cores - 1 if cores > 2 else cores


class StreamedBatches(BatchSource):
    """Batches of (normalized float images, labels) on the device, read from files each epoch.

    The pool's workers read each batch (decoded and cropped uint8 images, or the files for the
    device to decode); the device normalizes them, as Batches does. Each iteration is an
    epoch: its order is drawn on the CPU from (seed, epoch) like Batches, and each image's
    augmentation from (epoch seed, index), so a rerun with the same seed, or a resumed run
    that sets `epoch`, sees the same batches.
    """

    resident = False  # the in-memory Batches' flag: these images never sit on the device

    def __init__(
        self,
        files: FileList,
        *,
        pool: ReaderPool,
        transform: str,
        batch_size: int,
        device: torch.device,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        self.files, self.pool, self.transform = files, pool, transform
        self.batch_size, self.device = batch_size, torch.device(device)
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.shard = (0, 1)  # (rank, ranks): the slice of each batch read (training/distributed)
        self.y = files.labels  # every label, CPU int64, in dataset order
        self._normalizes(mean, std)

    @property
    def workers(self) -> int:
        return self.pool.workers

    def _uint8_epoch(self, order: Tensor | None, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.arange(len(self.y)) if order is None else order
        rank, ranks = self.shard
        chunks = [chunk.tensor_split(ranks)[rank] for chunk in order.split(self.batch_size)]
        items = self.pool.batches(EpochKeys(self.files, chunks, self.transform, seed))
        for chunk, item in zip(chunks, items):
            x = self.pool.finish(item, self.device)
            yield x, self.y[chunk].to(self.device, non_blocking=True)

    def close(self) -> None:
        """End the loader's workers now (shared: the run's other batches restart them if read
        again); idempotent."""
        self.pool.close()
