"""The Bench: flags, device, data and the sections that measure training itself."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.bench.common import (
    METHODS,
    SECTIONS,
    SIZES,
    median_parts,
    median_total,
)
from workbench.bench.ddp import DDPSections
from workbench.bench.fast_paths import FastPathSections
from workbench.bench.loader import LoaderSections
from workbench.bench.memory import MemorySections
from workbench.bench.pipeline import PipelineSections
from workbench.bench.runs import RunSections
from workbench.bench.variants import variant_class
from workbench.models.flops import forward_flops


class Bench(
    RunSections, MemorySections, FastPathSections, PipelineSections, DDPSections, LoaderSections
):
    """One benchmark run: the flags, the device, the data, and the results as they come."""

    def __init__(self, args: argparse.Namespace):
        # torch and the engine are imported here, so `workbench --help` stays fast
        import torch

        from workbench.config import DATASETS, Config, ConfigError
        from workbench.data import load_data
        from workbench.training.device import check_speed_options, resolve_device

        self.torch = torch
        sizes = SIZES["quick" if args.quick else "full"]
        pick = {
            k: v if getattr(args, k, None) is None else getattr(args, k) for k, v in sizes.items()
        }
        streamed = getattr(DATASETS.get(args.dataset), "streamed", False)
        if streamed and getattr(args, "n_test", None) is None:
            pick["n_test"] = 0  # the loader section never reads the test split: no subset of it
        self.repeats = max(1, pick["repeats"])
        if pick["threads"]:
            torch.set_num_threads(pick["threads"])  # bench_main restores the caller's
        self.skip = {s.strip() for s in pick["skip"].split(",") if s.strip()}
        only = {s.strip() for s in (getattr(args, "only", None) or "").split(",") if s.strip()}
        if only - set(SECTIONS):
            raise ConfigError(
                f"only: got {sorted(only - set(SECTIONS))[0]!r}; allowed: {', '.join(SECTIONS)}"
            )
        if only:  # the sections asked for, and no others
            self.skip = set(SECTIONS) - only
        unknown = self.skip - set(SECTIONS)
        if unknown:
            raise ConfigError(f"skip: got {sorted(unknown)[0]!r}; allowed: {', '.join(SECTIONS)}")
        try:
            self.depths = [int(d) for d in pick["depths"].split(",") if d.strip()]
        except ValueError:
            raise ConfigError(
                f"depths: got {pick['depths']!r}; allowed: module counts like 2,4,8,16"
            ) from None
        try:
            self.memory_modules = [int(k) for k in str(args.memory_modules).split(",")]
        except ValueError:
            raise ConfigError(
                f"memory_modules: got {args.memory_modules!r}; allowed: module counts like 2,4,8"
            ) from None
        self.peak_tflops = args.peak_tflops
        self.config = Config.from_dict(
            {
                "dataset": args.dataset,
                "data_dir": args.data_dir,
                "allow_modified_copy": args.allow_modified_copy,
                "device": args.device,
                "arch": args.arch,
                "width": pick["width"],
                "n_modules": args.n_modules,
                "batch_size": args.batch_size,
                "n_train": pick["n_train"],
                "n_test": pick["n_test"],
                "epochs": 1,
            }
        )
        others = sorted(set(SECTIONS) - self.skip - {"loader"}, key=SECTIONS.index)
        if self.config.dataset_info.streamed and others:  # they time in-memory batches
            raise ConfigError(
                f"dataset: got {args.dataset!r} for bench sections {', '.join(others)}; "
                "allowed: a dataset held in memory (mnist-5k, mnist, fashion-mnist, cifar10, "
                "cifar100, svhn, stl10), or a streamed one with --only loader"
            )
        self.quick = args.quick
        self.device = resolve_device(self.config.device)
        check_speed_options(self.config)
        self.data = load_data(self.config)
        self.n = len(self.data.train_y)
        self.tmp = Path(tempfile.mkdtemp(prefix="workbench-bench-"))
        self.variant = variant_class()
        trainer = self.trainer(self.config)
        c, s = self.config.dataset_info.channels, self.config.input_size
        sample = torch.zeros(1, c, s, s)  # a streamed dataset's images are files, not tensors
        if not self.config.dataset_info.streamed:
            sample = self.data.train_x[:1].float()
        self.flop_counts = forward_flops(trainer.model, sample.to(self.device))
        trainer.close()

    def log(self, message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    # -- building and timing ---------------------------------------------------------------
    def trainer(self, config: Any, data: Any = None) -> Any:
        """A Trainer on a fresh model (same seed: same initial weights) and the bench's data."""
        from workbench.models import build_model
        from workbench.records import RunDir

        data = data or self.data
        model = build_model(config, data.num_classes).to(self.device)  # a folder's classes too
        return self.variant(config, RunDir(self.tmp, config), model, data, self.device)

    def side_by_side(self, runs: dict[str, Callable[[], list[float]]]) -> dict[str, list]:
        """Warm every variant up once, then run them in turn `repeats` times: the raw seconds."""
        for run in runs.values():
            run()
        times: dict[str, list] = {name: [] for name in runs}
        for _ in range(self.repeats):
            for name, run in runs.items():
                times[name].append(run())
        return times

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        torch = self.torch
        start = time.perf_counter()
        result: dict[str, Any] = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "quick": self.quick,
            "device": str(self.device),
            "device_name": (
                torch.cuda.get_device_name(self.device)
                if self.device.type == "cuda"
                else platform.processor() or platform.machine()
            ),
            "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(),
            "load_average_start": list(os.getloadavg()),
            "repeats": self.repeats,
            "config": self.config.to_dict(),
            "data": self.data.provenance,
            "flops": self.flops(),
            "peak_tflops": self.peak_tflops,
        }
        try:
            for section in SECTIONS:
                if section in self.skip:
                    result[section] = {"skipped": "--skip"}
                    continue
                self.log(f"{section} ...")
                t = time.perf_counter()
                result[section] = getattr(self, section)()
                self.log(f"{section} done in {time.perf_counter() - t:.1f} s")
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        result["load_average_end"] = list(os.getloadavg())
        result["wall_time_s"] = time.perf_counter() - start
        return result

    def flops(self) -> dict[str, Any]:
        """Forward FLOPs of one image: each module and head (conv and linear layers)."""
        trunk, heads = self.flop_counts
        return {
            "how": "2 x multiply-adds of every Conv2d and Linear, counted by forward hooks",
            "per_module": trunk,
            "per_head": heads,
            "forward_per_image": sum(trunk) + sum(heads),
            "train_per_image": 3 * (sum(trunk) + sum(heads)),  # backward: about 2x the forward
        }

    def tflops(self, seconds: float) -> dict[str, Any]:
        """Training TFLOP/s of a pass over the data in `seconds`: 3 x forward FLOPs x images/s."""
        value = self.flops()["train_per_image"] * self.n / seconds / 1e12
        out: dict[str, Any] = {"train_tflops_per_s": value}
        if self.peak_tflops:
            out["fraction_of_peak"] = value / self.peak_tflops
        return out

    # -- sections ----------------------------------------------------------------------------
    def methods(self) -> dict[str, Any]:
        """Each method trains every module for one epoch: seconds, images/s, per module."""
        trainers = {m: self.trainer(self.config.replace(method=m)) for m in METHODS}
        reps = self.side_by_side({m: t.epoch_of_all_modules for m, t in trainers.items()})
        e2e = median_total(reps["end-to-end"])
        out: dict[str, Any] = {"n_modules": self.config.n_modules, "images": self.n}
        for m in METHODS:
            total = median_total(reps[m])
            if m == "sequential":  # one phase per module: module k's pass, prefix included
                per_module = [self.n / s for s in median_parts(reps[m])]
            else:  # one pass trains every module
                per_module = [self.n / total] * self.config.n_modules
            out[m] = {
                "epoch_all_modules_s": total,
                "images_per_s": self.n / total,
                "per_module_images_per_s": per_module,
                "speed_vs_end_to_end": e2e / total,
                **self.tflops(total),
            }
        return out

    def deepest(self, wanted: int) -> int:
        """`wanted` modules, or as many as the architecture has blocks."""
        from workbench.models.archs import unit_count

        if self.config.arch == "greedy-cnn":
            return wanted
        return min(wanted, unit_count(self.config))

    def depth(self) -> dict[str, Any]:
        """Sequential (prefix re-run every step) against parallel as the net deepens."""
        rows: list[dict[str, Any]] = []
        for d in self.depths:
            if self.deepest(d) != d:
                rows.append({"n_modules": d, "skipped": f"{self.config.arch} has fewer blocks"})
                continue
            config = self.config.replace(n_modules=d)
            seq, par = (self.trainer(config.replace(method=m)) for m in METHODS[:2])
            reps = self.side_by_side(
                {"seq": seq.epoch_of_all_modules, "par": par.epoch_of_all_modules}
            )
            s, p = median_total(reps["seq"]), median_total(reps["par"])
            rows.append(
                {
                    "n_modules": d,
                    "sequential_s": s,
                    "parallel_s": p,
                    "sequential_to_parallel": s / p,
                }
            )
            self.log(f"depth {d}: sequential {s:.2f} s, parallel {p:.2f} s")
        measured = [r for r in rows if "skipped" not in r]
        if measured:
            first = measured[0]
            for r in measured:
                r["depth_growth"] = r["n_modules"] / first["n_modules"]
                r["sequential_growth"] = r["sequential_s"] / first["sequential_s"]
                r["parallel_growth"] = r["parallel_s"] / first["parallel_s"]
        return {"unit": "seconds per epoch of all modules", "rows": rows}
