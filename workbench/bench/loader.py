"""The loader section: a streamed dataset's training batches alone, against the net's steps.

Whether a run on image files is held up by its loader or by its net: the loader's images/s
(the run's training batches, read by its persistent workers, normalized on the device, no
model), with PIL decoding in the workers and, on CUDA, decoding on the device, against the
training images/s of the bench's net on synthetic batches of the same shape and batch size.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from workbench.bench.common import median_parts, median_total

LOADER_BATCHES = {"quick": 4, "full": 40}  # training batches per timed loader epoch
NET_STEPS = {"quick": 2, "full": 10}  # training steps per pass of the synthetic batches
PIL_WORKERS = "workers (PIL)"
ON_DEVICE = "device (decode_jpeg)"


class LoaderSections:
    """The Bench's loader section (it reads its config, data, device and side_by_side)."""

    def loader(self) -> dict[str, Any]:
        """Loader images/s per decoder, the net's training images/s, and which is the limit."""
        if not self.config.dataset_info.streamed:
            return {
                "skipped": f"{self.config.dataset} is held in memory: its batches are gathered "
                "on the device, no loader workers read them (see fast_paths' resident_data)"
            }
        size = "quick" if self.quick else "full"
        data = self.loader_data(LOADER_BATCHES[size] * self.config.batch_size)
        images = len(data.train)
        decoders: dict[str, Any] = {PIL_WORKERS: self.loader_speed("false", data)}
        if self.device.type == "cuda":
            decoders[ON_DEVICE] = self.loader_speed("true", data)
        else:
            decoders[ON_DEVICE] = {"skipped": "decoding on the device needs a CUDA GPU"}
        net = self.net_speed(NET_STEPS[size])
        measured = {k: v["images_per_s"] for k, v in decoders.items() if "skipped" not in v}
        best = max(measured, key=measured.get)
        ratio = measured[best] / net["fastest_pass_images_per_s"]
        bottleneck = "loader" if ratio < 1 else "net"
        verdict = (
            f"the loader ({best}) delivers {ratio:.2f}x the images/s of the net's fastest "
            f"training pass: the {bottleneck} is the bottleneck"
        )
        return {
            "what": f"the run's training batches of {images} images (a seeded sample), read "
            "by its persistent workers and normalized on the device, no model; one epoch "
            "of warm-up (it starts the workers and fills the page cache), then the repeats; "
            "images/s of the median epoch",
            "images_per_epoch": images,
            "batch_size": self.config.batch_size,
            "image_size": self.config.input_size,
            "decoders": decoders,
            "net": net,
            "best_decoder": best,
            "loader_to_net": ratio,
            "bottleneck": bottleneck,
            "verdict": verdict,
        }

    def loader_data(self, images: int) -> Any:
        """The bench's streamed data with a seeded sample of `images` training files, and
        pools and provenance of its own (each decoder's batches record theirs)."""
        torch = self.torch
        files = self.data.train
        if images < len(files):
            order = torch.randperm(len(files), generator=torch.Generator().manual_seed(0))
            files = files.subset(order[:images].sort().values)
        provenance = dict(self.data.provenance)
        return dataclasses.replace(self.data, train=files, provenance=provenance, pools={})

    def loader_speed(self, gpu_decode: str, data: Any) -> dict[str, Any]:
        """Images/s of the training batches' epochs, read as a run reads them."""
        from workbench.data.folders import make_streamed_batches

        config = self.config.replace(gpu_decode=gpu_decode)
        train, _ = make_streamed_batches(data, config, self.device, config.batch_size)

        def epoch() -> list[float]:
            start = time.perf_counter()
            for _ in train:
                pass
            self.sync()
            return [time.perf_counter() - start]

        try:
            seconds = median_total(self.side_by_side({"loader": epoch})["loader"])
        finally:
            train.close()
        how = data.provenance["decode"].split(":")[0]
        self.log(f"loader, {how}: {len(train.y) / seconds:.0f} images/s")
        return {
            "images_per_s": len(train.y) / seconds,
            "epoch_s": seconds,
            "workers": train.workers,
            "decode": data.provenance["decode"],
        }

    def net_speed(self, steps: int) -> dict[str, Any]:
        """The bench's net training on synthetic uint8 batches held on the device (their
        gathering and normalizing is all the data work left): images/s of each pass."""
        from workbench.data import Batches

        torch, c = self.torch, self.config
        n = steps * c.batch_size
        gen = torch.Generator().manual_seed(0)
        shape = (n, c.dataset_info.channels, c.input_size, c.input_size)
        x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
        y = torch.randint(0, self.data.num_classes, (n,), generator=gen)
        trainer = self.trainer(c)
        try:
            trainer.train_batches = Batches(
                x, y, batch_size=c.batch_size, device=self.device, mean=self.data.mean,
                std=self.data.std, shuffle=True, seed=0, resident=True,
            )  # fmt: skip
            reps = self.side_by_side({"net": trainer.epoch_of_all_modules})["net"]
        finally:
            trainer.close()
        per_pass = [n / s for s in median_parts(reps)]
        return {
            "what": f"{c.method} training of {c.arch} ({c.n_modules} modules), {steps} steps "
            "of synthetic batches per pass; a pass per phase (sequential: one per module, "
            "the frozen prefix included): the loader must keep up with the fastest",
            "method": c.method,
            "steps": steps,
            "per_pass_images_per_s": per_pass,
            "fastest_pass_images_per_s": max(per_pass),
            "slowest_pass_images_per_s": min(per_pass),
        }
