"""Batches on the device: the uint8 images gathered, augmented and normalized there (airbench).

BatchSource is what the engine iterates over, whichever way the images arrive; Batches holds a
dataset in memory (on the device whenever it fits), data.streaming.StreamedBatches reads it
from files.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from workbench.memory import free_memory_bytes

AUGMENTATIONS = ("none", "crop", "crop-flip", "reflect-crop-flip")
CROP_PADDING = 4  # pixels of padding the random crop shifts within, as in the papers


def normalization_tensors(
    mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """(scale, shift) per channel, 1 x C x 1 x 1: x / 255 normalized is x * scale + shift."""
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    return (1 / (255 * std_t)).to(device), (-mean_t / std_t).to(device)


def normalize(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """uint8 images as normalized floats: one multiply-add per pixel, wherever they are."""
    return x.float().mul_(scale).add_(shift)


class BatchSource:
    """What the engine iterates over, in memory (Batches) or streamed from files
    (data.streaming.StreamedBatches): len, iteration (an epoch, normalized), `iterate` (an
    epoch of the uint8 images, for a consumer that normalizes them itself: a quarter of the
    bytes to send), batch_size, epoch, y and next_epoch()."""

    batch_size: int
    device: torch.device
    shuffle: bool
    seed: int
    epoch: int
    y: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def _normalizes(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        self._scale, self._shift = normalization_tensors(mean, std, self.device)

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)  # the last, partial batch counts

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iterate(normalized=True)

    def iterate(self, normalized: bool = True) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch's batches: normalized floats, or (normalized False) the uint8 images."""
        # the epoch advances here, not when the generator first runs, so iter() alone counts
        order, seed = self.next_epoch()
        batches = self._uint8_epoch(order, seed)
        if not normalized:
            return batches
        return ((normalize(x, self._scale, self._shift), y) for x, y in batches)

    def next_epoch(self) -> tuple[Tensor | None, int]:
        """Advance to the next epoch: (its example order, None for storage order; its seed).

        Anything serving the same examples in the same order (a feature cache) calls this too.
        """
        self.epoch += 1
        seed = _epoch_seed(self.seed, self.epoch - 1)
        if not self.shuffle:
            return None, seed
        # drawn on the CPU, so both paths and every device see the same order
        return torch.randperm(len(self.y), generator=torch.Generator().manual_seed(seed)), seed

    def _uint8_epoch(self, order: Tensor | None, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        raise NotImplementedError


class Batches(BatchSource):
    """Batches of (normalized float images, labels) on the device; each iteration is an epoch.

    Resident (whenever the uint8 images fit): x and y move to the device once and every batch
    is gathered, augmented and normalized there. Otherwise a DataLoader copies pinned CPU
    batches to the device and the same augmentation runs after the copy. Both draw the epoch's
    order on the CPU and the augmentation from a device generator, seeded from (seed, epoch),
    so both give the same batches, and a rerun with the same seed gives the same epochs.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        batch_size: int,
        device: torch.device,
        mean: Sequence[float],
        std: Sequence[float],
        augment: str = "none",
        shuffle: bool = False,
        seed: int = 0,
        resident: bool | None = None,  # None: decide by free device memory; False forces the loader
    ) -> None:
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment: got {augment!r}; allowed: {', '.join(AUGMENTATIONS)}")
        self.batch_size, self.device, self.augment = batch_size, torch.device(device), augment
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.resident = _fits(x, self.device) if resident is None else resident
        self._normalizes(mean, std)
        self.x, self.y = (x.to(self.device), y.to(self.device)) if self.resident else (x, y)

    def _uint8_epoch(self, order: Tensor | None, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        n, size = len(self.y), self.batch_size
        if order is not None:
            chunks: list[Any] = list(order.to(self.x.device).split(size))
        else:
            chunks = [slice(i, i + size) for i in range(0, n, size)]  # views, no gather
        gen = torch.Generator(device=self.device).manual_seed(seed)
        if self.resident:
            for idx in chunks:
                yield self._augment(self.x[idx], gen), self.y[idx]
            return
        # batch_size=None: each sampler item is a whole batch's index, fetched in one indexing
        loader = DataLoader(
            TensorDataset(self.x, self.y),
            batch_size=None,
            sampler=chunks,
            pin_memory=self.device.type == "cuda",
        )
        for xb, yb in loader:
            xb = xb.to(self.device, non_blocking=True)
            yield self._augment(xb, gen), yb.to(self.device, non_blocking=True)

    def _augment(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """Crop and flip on the device, still uint8 (so zero padding is black; reflect-crop-flip
        pads by reflection, as TRGL's CIFAR loader does)."""
        if self.augment != "none":
            x = _random_crop(x, CROP_PADDING, gen, reflect=self.augment.startswith("reflect"))
        if self.augment.endswith("flip"):
            flip = torch.rand(len(x), generator=gen, device=x.device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        return x


def _random_crop(x: Tensor, pad: int, gen: torch.Generator, reflect: bool = False) -> Tensor:
    """torchvision's RandomCrop(size, padding=pad) for a whole batch: one gather, no loop;
    `reflect`: its padding_mode="reflect" (the border mirrors the image, edge not repeated)."""
    n, c, h, w = x.shape
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1), generator=gen, device=x.device)
    rows = dy + torch.arange(h, device=x.device)  # indices into the padded image
    cols = dx + torch.arange(w, device=x.device)
    if reflect:  # indices into x itself: -1 -> 1, h -> h - 2
        source, rows, cols = x, _mirror(rows - pad, h), _mirror(cols - pad, w)
    else:
        source = F.pad(x, (pad, pad, pad, pad))
    images = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channels = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return source[images, channels, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def _mirror(i: Tensor, n: int) -> Tensor:
    """Reflect indices outside 0..n-1 back inside, as F.pad's mode="reflect" does."""
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def _fits(x: Tensor, device: torch.device) -> bool:
    """Whether x should live on the device: on CUDA, if it takes under half the free memory."""
    if device.type != "cuda":
        return True  # host memory: the tensor is already there
    free = free_memory_bytes(device)  # the allocator's unused cache counts as free
    return x.numel() * x.element_size() < free / 2  # the rest is for the model and activations


def _epoch_seed(seed: int, epoch: int) -> int:
    # distinct (seed, epoch) pairs give distinct seeds for any realistic number of epochs
    return (seed * 1_000_003 + epoch) % 2**63
