"""JPEGs decoded and augmented on the device (gpu_decode): the workers only read the files.

Each worker reads a batch's file bytes, each file's size from its header (PIL's lazy open
decodes nothing) and draws each image's augmentation as numbers (a Planner, seeded by (epoch
seed, index) like the PIL path). The main process then decodes the whole batch with
torchvision.io.decode_jpeg (batched nvJPEG on CUDA), and crops, resizes (bilinear, antialiased)
and flips each image there. Files decode_jpeg cannot give as RGB (PNG and other formats,
greyscale or CMYK JPEGs) are decoded by PIL in the worker, and get the same device steps.

The random parameters are the PIL path's: the Planner calls the same torchvision transforms'
make_params in the order the PIL path's v2 Compose draws them, so an image's crop box and flip
are the same in both. The pixels differ slightly: another JPEG decoder (nvJPEG on CUDA) and
another resizer (torch's antialiased bilinear interpolate against PIL's), a level or two of 255
where an image is resized. Nothing here needs CUDA: with device "cpu" the same code runs on the
CPU (decode_jpeg's libjpeg-turbo), which is how the tests check it.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

from workbench.config import Config
from workbench.data import DataError, _one_line
from workbench.data.streaming import (
    BatchKey,
    TransformSpec,
    Unreadable,
    image_random_state,
    unreadable_error,
)

# one image's plan: the box cut from the decoded image, the size it is resized to, the window
# of the output size cut from that, a shift within zero padding (pad-crop), and a flip
PLAN = ("box_top", "box_left", "box_height", "box_width", "resized_height", "resized_width",
        "window_top", "window_left", "shift_y", "shift_x", "flip")  # fmt: skip
HOW = (
    "device (torchvision.io.decode_jpeg): JPEG bytes read by the DataLoader workers, decoded, "
    "cropped, resized and flipped on the device; other files (PNG, greyscale or CMYK JPEG) "
    "decoded by PIL in the workers"
)


def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """torchvision's Resize(short) output size: the short side to `short`, the long side
    scaled and rounded down (transforms.functional._compute_resized_output_size)."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def centre_anchor(height: int, width: int, size: int) -> tuple[int, int]:
    """Top-left of CenterCrop(size), as torchvision rounds it."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def _stand_in(height: int, width: int) -> Tensor:
    # what make_params asks of an image is its size: a 3 x H x W tensor with no memory behind it
    return torch.empty(1, 1, 1, dtype=torch.uint8).expand(3, height, width)


class Planner:
    """One image's augmentation drawn as numbers (PLAN), as the PIL path's transform draws it."""

    def __init__(self, spec: TransformSpec):
        self.spec = spec
        s = spec.size
        self.resized_crop = v2.RandomResizedCrop(s) if spec.resized_crop else None
        self.pad_crop = v2.RandomCrop(s, padding=spec.pad_crop) if spec.pad_crop else None
        self.flip = v2.RandomHorizontalFlip() if spec.flip else None

    def plan(self, height: int, width: int) -> list[int]:
        """The plan of an image of this size; draws from torch's global generator (seed it)."""
        s = self.spec.size
        shift = (0, 0)
        if self.resized_crop is not None:
            p = self.resized_crop.make_params([_stand_in(height, width)])
            box = (p["top"], p["left"], p["height"], p["width"])
            resized, window = (s, s), (0, 0)
        else:
            box = (0, 0, height, width)
            resized = short_side_size(height, width, self.spec.resize)
            window = centre_anchor(*resized, s)
            if self.pad_crop is not None:
                p = self.pad_crop.make_params([_stand_in(s, s)])
                pad_left, pad_top = p["padding"][:2]  # [left, top, right, bottom]
                shift = (p["top"] - pad_top, p["left"] - pad_left)
        # v2's RandomHorizontalFlip skips when torch.rand(1) >= p: the same draw, after the crop's
        flip = self.flip is not None and bool(torch.rand(1) < self.flip.p)
        return [*box, *resized, *window, *shift, int(flip)]


@dataclass
class EncodedBatch:
    """A batch as the workers hand it to the device: bytes or pixels, sizes and plans."""

    paths: list[str]
    data: Tensor  # uint8, 1-D: each image's JPEG file bytes, or its C x H x W pixels, in turn
    lengths: list[int]  # each image's part of data
    encoded: list[bool]  # whether the part is a JPEG file (else pixels PIL decoded)
    shapes: list[tuple[int, int]]  # each image's (height, width), from its header
    plans: list[list[int]]
    size: int  # the output's height and width

    def pin_memory(self) -> EncodedBatch:
        """The DataLoader's pin_memory calls this: page-locked bytes copy to the GPU faster."""
        return dataclasses.replace(self, data=self.data.pin_memory())


def read_encoded(path: str) -> tuple[np.ndarray, bool, tuple[int, int]]:
    """(bytes or pixels, whether they are an RGB JPEG's bytes, (height, width)) of one file."""
    with open(path, "rb") as f:
        raw = f.read()
    with Image.open(io.BytesIO(raw)) as image:  # lazy: reads the header only
        width, height = image.size
        if image.format == "JPEG" and image.mode == "RGB":
            return np.frombuffer(raw, np.uint8), True, (height, width)
        pixels = np.asarray(image.convert("RGB"))  # decodes now: a broken file fails here
    return pixels.transpose(2, 0, 1).reshape(-1), False, (height, width)


class EncodedReader(Dataset):
    """What a worker does for gpu_decode: reads a batch's files and plans their augmentation."""

    how = HOW

    def __init__(self, specs: dict[str, TransformSpec]):
        self.planners = {name: Planner(spec) for name, spec in specs.items()}

    def __getitem__(self, key: BatchKey) -> EncodedBatch | Unreadable:
        planner = self.planners[key.transform]
        parts, encoded, shapes, plans = [], [], [], []
        for path, i in zip(key.paths, key.indices):
            try:
                part, is_jpeg, shape = read_encoded(path)
            except Exception as err:  # PIL fails as OSError, SyntaxError, ValueError, ...
                return Unreadable(path, _one_line(err))
            with image_random_state(key.seed, i):
                plans.append(planner.plan(*shape))
            parts.append(part)
            encoded.append(is_jpeg)
            shapes.append(shape)
        data = torch.from_numpy(np.concatenate(parts))
        lengths = [len(p) for p in parts]
        size = planner.spec.size
        return EncodedBatch(list(key.paths), data, lengths, encoded, shapes, plans, size)

    def finish(self, batch: EncodedBatch, device: torch.device) -> Tensor:
        """Decode and augment the batch on the device: uint8 N x 3 x size x size."""
        return decode_and_augment(batch, device)


def decodes_on_device(config: Config, device: torch.device | str) -> bool:
    """Whether the run decodes its JPEGs on the device: gpu_decode, auto = on CUDA.

    true on a run whose device is not CUDA is a DataError (one line), before any training.
    """
    kind = torch.device(device).type
    if config.gpu_decode == "true" and kind != "cuda":
        raise DataError(
            f"gpu_decode: got 'true' for a run on the {kind}; allowed: auto or false (decoding "
            "on the device needs a CUDA GPU; auto decodes there whenever the run has one)"
        )
    return config.gpu_decode == "true" or (config.gpu_decode == "auto" and kind == "cuda")


# -- on the device ------------------------------------------------------------------------------
def decode_and_augment(batch: EncodedBatch, device: torch.device | str) -> Tensor:
    """The batch's images decoded on `device` and cropped, resized and flipped by their plans."""
    device = torch.device(device)
    parts = batch.data.split(batch.lengths)
    jpegs = [j for j, is_jpeg in enumerate(batch.encoded) if is_jpeg]
    decoded = _decode_jpegs([parts[j] for j in jpegs], [batch.paths[j] for j in jpegs], device)
    images = dict(zip(jpegs, decoded))
    for j, is_jpeg in enumerate(batch.encoded):
        if not is_jpeg:  # pixels PIL decoded in the worker
            images[j] = parts[j].view(3, *batch.shapes[j]).to(device, non_blocking=True)
    return augment([images[j] for j in range(len(parts))], batch.plans, batch.size)


def _decode_jpegs(data: list[Tensor], paths: list[str], device: torch.device) -> list[Tensor]:
    """decode_jpeg of the whole list at once (batched nvJPEG on CUDA); if that fails, image by
    image, on the CPU for one the device refuses, and a DataError naming one neither decodes."""
    if not data:
        return []
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        pass  # one file the batched decoder refuses fails the whole call: find it
    images = []
    for part, path in zip(data, paths):
        try:
            images.append(decode_jpeg(part, mode=ImageReadMode.RGB, device=device))
            continue
        except RuntimeError as err:
            error = err
        if device.type != "cpu":  # a JPEG feature the device's decoder lacks: libjpeg-turbo
            try:
                images.append(decode_jpeg(part, mode=ImageReadMode.RGB).to(device))
                continue
            except RuntimeError as err:
                error = err
        raise unreadable_error(path, _one_line(error))
    return images


def resize(image: Tensor, height: int, width: int) -> Tensor:
    """uint8 C x H x W resized by antialiased bilinear interpolation (as torchvision does it
    for tensors), rounded back to uint8."""
    x = F.interpolate(
        image[None].float(), size=(height, width), mode="bilinear", align_corners=False,
        antialias=True,
    )  # fmt: skip
    return x[0].round_().clamp_(0, 255).to(torch.uint8)


def augment(images: list[Tensor], plans: list[list[int]], size: int) -> Tensor:
    """Each image's box, resize and window (one image at a time: the sizes differ), then the
    batch's shifts within zero padding and flips at once: uint8 N x C x size x size."""
    windows = []
    for image, plan in zip(images, plans):
        top, left, height, width, resized_h, resized_w, window_top, window_left = plan[:8]
        x = image[:, top : top + height, left : left + width]
        if (resized_h, resized_w) != (height, width):
            x = resize(x, resized_h, resized_w)
        windows.append(x[:, window_top : window_top + size, window_left : window_left + size])
    x = torch.stack(windows)
    steps = torch.tensor(plans, dtype=torch.int64)[:, 8:]
    if steps[:, :2].any():
        x = shifted(x, steps[:, 0].tolist(), steps[:, 1].tolist())
    flips = steps[:, 2].bool()
    if flips.any():  # asked of the plans on the host: on the device it would be a sync
        x = torch.where(flips.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)
    return x


def shifted(x: Tensor, dy: list[int], dx: list[int]) -> Tensor:
    """Image i moved so that output pixel (r, c) is x[i, :, r + dy[i], c + dx[i]], zero outside:
    RandomCrop(size, padding) of the padded image, for a whole batch in one gather."""
    n, c, h, w = x.shape
    pad = max(max(map(abs, dy)), max(map(abs, dx)))
    padded = F.pad(x, (pad, pad, pad, pad))
    dev = x.device
    top = torch.tensor(dy, device=dev).view(n, 1, 1, 1) + pad
    left = torch.tensor(dx, device=dev).view(n, 1, 1, 1) + pad
    rows = top + torch.arange(h, device=dev).view(1, 1, h, 1)
    cols = left + torch.arange(w, device=dev).view(1, 1, 1, w)
    images = torch.arange(n, device=dev).view(n, 1, 1, 1)
    channels = torch.arange(c, device=dev).view(1, c, 1, 1)
    return padded[images, channels, rows, cols]
