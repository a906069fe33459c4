"""`workbench bench`: layer-wise against end-to-end training side by side, and the fast paths.

    workbench bench --quick --out DIR        # CI-sized, well under two minutes on 2 CPU cores
    workbench bench --dataset cifar10 --data-dir DATA --allow-modified-copy --device cuda \\
        --peak-tflops 989                    # the full measurement on a GPU (H100 dense bf16)

One process, one network, one dataset. Every comparison runs its variants in turn, repetition
by repetition after a warm-up, and is reported as a ratio of medians, because a machine's speed
drifts between measurements taken minutes apart. DIR/bench.json holds every figure and
DIR/bench.md the tables; both are written atomically. The sections (any can be --skip-ped):

    methods     seconds per epoch of all modules, images/s per module, FLOP/s: each method
    memory      peak training memory of each method on a deep net; layer-wise / end-to-end
    depth       sequential against parallel at 2, 4, 8 and 16 modules
    callbacks   a run with and without the live plots
    fast_paths  each fast path of the engine, before and after
    compile     torch.compile: compile time and steady-state speed (minutes on a CPU)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

SECTIONS = ("methods", "memory", "depth", "callbacks", "fast_paths", "compile")
METHODS = ("sequential", "parallel", "end-to-end")
WITH_GRAD = "sequential, prefix with grad"  # the memory the frozen prefix's no_grad saves
SIZES = {  # what --quick and the default measure, unless a flag says otherwise
    # quick: one thread, since two OpenMP threads crawl on a shared, oversubscribed CI runner
    "quick": {"n_train": 256, "n_test": 100, "width": 8, "repeats": 2, "depths": "2,4,8",
              "threads": 1, "skip": "compile"},
    "full": {"n_train": 0, "n_test": 0, "width": 0, "repeats": 5, "depths": "2,4,8,16",
             "threads": 0, "skip": ""},
}  # fmt: skip


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bench command's flags."""
    arg = parser.add_argument
    arg("--quick", action="store_true", help="CI-sized: 256 images, width 8, 2 repeats, 1 thread")
    arg("--out", default="bench", help="folder for bench.json and bench.md (default bench/)")
    arg("--dataset", default="mnist-5k", help="default mnist-5k (embedded)")
    arg("--data-dir", default="data", help="torchvision root (default data/)")
    arg("--allow-modified-copy", nargs="?", const="true", default="false",
        help="accept dataset files whose checksums differ from the originals")  # fmt: skip
    arg("--device", default="auto", help="auto, cpu or cuda")
    arg("--arch", default="greedy-cnn", help="default greedy-cnn")
    arg("--width", type=int, help="first layer's width (quick: 8; default: the arch's)")
    arg("--n-modules", type=int, default=4, help="modules of the network (default 4)")
    arg("--memory-modules", type=int, default=8, help="modules of the deep net (default 8)")
    arg("--depths", help="module counts to scale over (quick: 2,4,8; default: 2,4,8,16)")
    arg("--batch-size", type=int, default=128, help="default 128")
    arg("--n-train", type=int, help="training images (quick: 256; default: all)")
    arg("--n-test", type=int, help="test images of the callbacks' runs (quick: 100; default all)")
    arg("--repeats", type=int, help="timed repetitions after the warm-up (quick 2, default 5)")
    arg("--threads", type=int, help="torch's CPU threads (quick: 1; default: torch's choice)")
    arg("--peak-tflops", type=float, help="the device's peak TFLOP/s, for the fraction of peak")
    arg("--skip", help=f"comma-separated sections to skip: {', '.join(SECTIONS)} "
        "(default: compile with --quick, none otherwise)")  # fmt: skip


def bench_main(args: argparse.Namespace) -> int:
    """Run the benchmark; returns the exit code (2 for a bad flag)."""
    import torch

    from workbench.config import ConfigError

    threads = torch.get_num_threads()
    try:
        result = Bench(args).run()
    except ConfigError as e:
        print(f"workbench bench: error: {e}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)  # this may run inside another program (a test)
    from workbench.records import atomic_write_bytes

    out = Path(args.out)
    markdown = to_markdown(result)
    atomic_write_bytes(out / "bench.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(out / "bench.md", markdown.encode())
    print(markdown)
    print(f"written: {out / 'bench.json'}, {out / 'bench.md'}")
    return 0


# -- measuring ----------------------------------------------------------------------------------
def _median_total(reps: list[list[float]]) -> float:
    """The median over repetitions of a repetition's total seconds."""
    return statistics.median(sum(rep) for rep in reps)


def _median_parts(reps: list[list[float]]) -> list[float]:
    """Per part (phase), the median over repetitions."""
    return [statistics.median(part) for part in zip(*reps)]


def _one_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]


class Bench:
    """One benchmark run: the flags, the device, the data, and the results as they come."""

    def __init__(self, args: argparse.Namespace):
        # torch and the engine are imported here, so `workbench --help` stays fast
        import torch

        from workbench.config import Config, ConfigError
        from workbench.data import load_data
        from workbench.training.device import check_speed_options, resolve_device

        self.torch = torch
        sizes = SIZES["quick" if args.quick else "full"]
        pick = {
            k: v if getattr(args, k, None) is None else getattr(args, k) for k, v in sizes.items()
        }
        self.repeats = max(1, pick["repeats"])
        if pick["threads"]:
            torch.set_num_threads(pick["threads"])  # bench_main restores the caller's
        self.skip = {s.strip() for s in pick["skip"].split(",") if s.strip()}
        unknown = self.skip - set(SECTIONS)
        if unknown:
            raise ConfigError(f"skip: got {sorted(unknown)[0]!r}; allowed: {', '.join(SECTIONS)}")
        try:
            self.depths = [int(d) for d in pick["depths"].split(",") if d.strip()]
        except ValueError:
            raise ConfigError(
                f"depths: got {pick['depths']!r}; allowed: module counts like 2,4,8,16"
            ) from None
        self.memory_modules = args.memory_modules
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
        if self.config.dataset_info.streamed:  # its sections time the in-memory batches
            raise ConfigError(
                f"dataset: got {args.dataset!r} for bench; allowed: a dataset held in memory "
                "(mnist-5k, mnist, fashion-mnist, cifar10, cifar100, svhn, stl10)"
            )
        self.quick = args.quick
        self.device = resolve_device(self.config.device)
        check_speed_options(self.config)
        self.data = load_data(self.config)
        self.n = len(self.data.train_y)
        self.tmp = Path(tempfile.mkdtemp(prefix="workbench-bench-"))
        self.variant = _variant_class()
        model = self.trainer(self.config).model
        self.flop_counts = forward_flops(model, self.data.train_x[:1].float().to(self.device))

    def log(self, message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    # -- building and timing ---------------------------------------------------------------
    def trainer(self, config: Any, data: Any = None) -> Any:
        """A Trainer on a fresh model (same seed: same initial weights) and the bench's data."""
        from workbench.models import build_model
        from workbench.records import RunDir

        model = build_model(config).to(self.device)
        return self.variant(config, RunDir(self.tmp, config), model, data or self.data, self.device)

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
        e2e = _median_total(reps["end-to-end"])
        out: dict[str, Any] = {"n_modules": self.config.n_modules, "images": self.n}
        for m in METHODS:
            total = _median_total(reps[m])
            if m == "sequential":  # one phase per module: module k's pass, prefix included
                per_module = [self.n / s for s in _median_parts(reps[m])]
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

    def memory(self) -> dict[str, Any]:
        """Peak memory of two training steps per phase of each method, on a deep network."""
        config = self.config.replace(n_modules=self.deepest(self.memory_modules))
        steps = 2 * config.batch_size
        data = dataclasses.replace(
            self.data, train_x=self.data.train_x[:steps], train_y=self.data.train_y[:steps]
        )
        out: dict[str, Any] = {"n_modules": config.n_modules, "how": self.memory_how()}
        variants = [(m, m, {}) for m in METHODS]  # (label, method, Variant options)
        variants.append((WITH_GRAD, "sequential", {"prefix_mode": "grad"}))
        for label, method, options in variants:
            trainer = self.trainer(config.replace(method=method), data)
            trainer.set_options(**options)
            params = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
            out[label] = {**self.peak_memory(trainer), "parameter_bytes": params}
            del trainer
        e2e = out["end-to-end"]["peak_bytes"]
        out["ratio_to_end_to_end"] = {
            label: out[label]["peak_bytes"] / e2e for label, *_ in variants if label != "end-to-end"
        }
        return out

    def memory_how(self) -> str:
        if self.device.type == "cuda":
            return (
                "CUDA max_memory_allocated, reset before each method; peak_bytes is the peak "
                "minus what was allocated before its first step (weights, resident data)"
            )
        return (
            "bytes of the tensors allocated during training (a TorchDispatchMode counting new "
            "output storages until they are freed), peak over the steps; weights and data made "
            "before the first step are not counted"
        )

    def peak_memory(self, trainer: Any) -> dict[str, int]:
        """Peak bytes that training every phase (then releasing it, as fit does) allocates."""
        torch = self.torch

        def train() -> None:
            for phase in trainer.phases:
                trainer.train_pass(phase, 0)
                trainer.end_phase(phase)

        if self.device.type == "cuda":
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            train()
            peak = torch.cuda.max_memory_allocated(self.device)
            return {"peak_bytes": peak - before, "cuda_max_allocated_bytes": peak}
        with tensor_memory() as tracked:
            train()
        return {"peak_bytes": tracked.peak}

    def deepest(self, wanted: int) -> int:
        """`wanted` modules, or as many as the architecture has blocks."""
        from workbench.config import n_units

        if self.config.arch == "greedy-cnn":
            return wanted
        return min(wanted, n_units(self.config))

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
            s, p = _median_total(reps["seq"]), _median_total(reps["par"])
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

    def callbacks(self) -> dict[str, Any]:
        """Whole runs (sequential, one epoch per module) with and without the live plots."""
        try:
            from workbench.ui.live import LivePlots
        except ImportError as e:
            return {"skipped": f"workbench.ui.live cannot be imported ({_one_line(e)})"}
        from workbench.training import run_experiment

        config = self.config.replace(method="sequential")
        plots = LivePlots(config.n_modules)  # built once: a notebook builds it once too
        inside: list[float] = []

        def timed(event: str, info: dict[str, Any]) -> None:
            t = time.perf_counter()
            plots(event, info)
            inside[-1] += time.perf_counter() - t

        def run(callbacks: list) -> list[float]:
            with tempfile.TemporaryDirectory(dir=self.tmp) as folder:
                t = time.perf_counter()
                run_experiment(config.replace(out=folder + "/run"), callbacks=callbacks)
                return [time.perf_counter() - t]

        def with_plots() -> list[float]:
            inside.append(0.0)
            return run([timed])

        reps = self.side_by_side({"without": lambda: run([]), "with": with_plots})
        without, with_ = _median_total(reps["without"]), _median_total(reps["with"])
        return {
            "callback": "workbench.ui.live.LivePlots (throttled redraws, as in the notebook)",
            "run": "run_experiment, sequential, one epoch per module, data loading included",
            "without_s": without,
            "with_s": with_,
            "ratio": with_ / without,
            "inside_callback_s": statistics.median(inside),
        }

    def fast_paths(self) -> dict[str, Any]:
        """Each fast path against the variant without it, on the same network and data."""
        base = self.config
        out: dict[str, Any] = {}
        last = base.n_modules - 1  # the deepest frozen prefix
        seq = base.replace(method="sequential")
        par = base.replace(method="parallel")
        out["frozen_prefix_no_grad"] = self.compare(
            f"sequential, module {last + 1}",
            {"with grad": (seq, {"prefix_mode": "grad"}), "no_grad": (seq, {})},
            phase=last,
        )
        out["frozen_prefix_inference_mode"] = self.compare(
            f"sequential, module {last + 1}; inference_mode needs a clone before backward",
            {"no_grad": (seq, {}), "inference_mode + clone": (seq, {"prefix_mode": "inference"})},
            phase=last,
        )
        out["resident_data"] = self.compare(
            "parallel",
            {"DataLoader": (par, {"resident": False}), "resident": (par, {"resident": True})},
        )
        out["no_host_sync"] = self.compare(
            "parallel",
            {"sync every step": (par, {"sync_each_step": True}), "sync per epoch": (par, {})},
        )
        bf16_note = "" if self.device.type == "cuda" else "; the CPU default stays fp32"
        out["bf16_autocast"] = self.compare(
            "parallel" + bf16_note,
            {
                "fp32": (par.replace(precision="fp32"), {}),
                "bf16": (par.replace(precision="bf16"), {}),
            },
        )
        if self.device.type == "cuda":
            out["channels_last"] = self.compare(
                "parallel",
                {"NCHW": (par.replace(channels_last=False), {}), "NHWC": (par, {})},
            )
        else:
            out["channels_last"] = {"skipped": "NHWC is used on CUDA only"}
        out["pinned_memory"] = {
            "skipped": "always on for the DataLoader path on CUDA (data.Batches); "
            "resident_data's 'before' includes it"
        }
        out["feature_cache"] = self.feature_cache()
        return out

    def compare(
        self, what: str, variants: dict[str, tuple[Any, dict[str, Any]]], phase: int | None = None
    ) -> dict[str, Any]:
        """Time two variants side by side; speedup = after's speed / before's (after is 2nd)."""
        try:
            trainers = {}
            for name, (config, options) in variants.items():
                trainers[name] = t = self.trainer(config)
                t.set_options(**options)
            runs = {
                name: lambda t=t: t.epoch_of_all_modules(None if phase is None else [phase])
                for name, t in trainers.items()
            }
            reps = self.side_by_side(runs)
        except Exception as e:  # a variant this machine cannot run (bf16 kernels, say)
            return {"what": what, "skipped": _one_line(e)}
        (before, b), (after, a) = ((n, _median_total(r)) for n, r in reps.items())
        return {
            "what": what,
            "before": before,
            "after": after,
            "before_images_per_s": self.n / b,
            "after_images_per_s": self.n / a,
            "speedup": b / a,
        }

    def feature_cache(self) -> dict[str, Any]:
        """Sequential with and without the cached prefix (augmentation off, as it requires)."""
        config = self.config.replace(method="sequential", augment="none")
        plain, cached = self.trainer(config), self.trainer(config.replace(cache_features=True))
        builds: list[float] = []

        def cached_pass() -> list[float]:
            seconds, build = [], 0.0
            for phase in cached.phases:
                t = time.perf_counter()
                cached.begin_phase(phase)
                self.sync()
                build += time.perf_counter() - t
                seconds.append(cached.train_pass(phase, 0)[2])
                cached.end_phase(phase)
            builds.append(build)
            return seconds

        reps = self.side_by_side({"plain": plain.epoch_of_all_modules, "cached": cached_pass})
        b, a = _median_total(reps["plain"]), _median_total(reps["cached"])
        build = statistics.median(builds)
        return {
            "what": "sequential, every module one epoch; the cache is built once per module",
            "before": "prefix every step",
            "after": "cached prefix",
            "before_images_per_s": self.n / b,
            "after_images_per_s": self.n / a,
            "cache_build_s": build,
            "speedup": b / a,  # per epoch, once the cache is built
            "speedup_one_epoch_with_build": b / (a + build),
        }

    def compile(self) -> dict[str, Any]:
        """torch.compile on every module and head (parallel): compile time, then steady speed."""
        self.torch._dynamo.reset()
        par = self.config.replace(method="parallel")
        try:
            eager, compiled = self.trainer(par), self.trainer(par.replace(compile=True))
            t = time.perf_counter()
            compiled.epoch_of_all_modules()  # the first pass compiles (and recompiles)
            first = time.perf_counter() - t
            reps = self.side_by_side(
                {"eager": eager.epoch_of_all_modules, "compiled": compiled.epoch_of_all_modules}
            )
        except Exception as e:  # no C++ compiler, an unsupported op, ...
            return {"skipped": f"torch.compile failed here: {_one_line(e)}"}
        b, a = _median_total(reps["eager"]), _median_total(reps["compiled"])
        return {
            "what": "parallel; compile_s = first compiled pass - a steady compiled pass",
            "compile_s": first - a,
            "before": "eager",
            "after": "compiled",
            "before_images_per_s": self.n / b,
            "after_images_per_s": self.n / a,
            "speedup": b / a,
        }


# -- the engine, with the slow variants the fast paths are measured against --------------------
def _variant_class() -> type:
    from workbench.data import Batches
    from workbench.training.engine import Trainer

    class Variant(Trainer):
        """A Trainer whose fast paths can be switched off (only here: runs always use them)."""

        prefix_mode = "no_grad"  # "grad": autograd records the prefix; "inference": see below
        sync_each_step = False  # read the metrics on the host after every step

        def set_options(
            self, prefix_mode: str = "no_grad", sync_each_step: bool = False, resident=None
        ) -> None:
            self.prefix_mode, self.sync_each_step = prefix_mode, sync_each_step
            if resident is not None:
                b = self.train_batches
                self.train_batches = Batches(
                    self.data.train_x,
                    self.data.train_y,
                    batch_size=b.batch_size,
                    device=self.device,
                    mean=self.data.mean,
                    std=self.data.std,
                    augment=b.augment,
                    shuffle=b.shuffle,
                    seed=b.seed,
                    resident=resident,
                )

        def prefix_features(self, phase, x):
            if self.prefix_mode == "grad":
                with self.autocast():
                    for k in range(phase.frozen_prefix):
                        x = self.frozen[k](x)
                return x.detach()
            if self.prefix_mode == "inference":
                import torch

                with torch.inference_mode():
                    x = super().prefix_features(phase, x)
                return x.clone()  # an inference tensor cannot be saved for backward
            return super().prefix_features(phase, x)

        def step(self, phase, x, y, stats):
            super().step(phase, x, y, stats)
            if self.sync_each_step:
                stats.tolist()

        def epoch_of_all_modules(self, only: list[int] | None = None) -> list[float]:
            """Seconds of one epoch of each phase's (or only some) training steps."""
            phases = self.phases if only is None else [self.phases[i] for i in only]
            return [self.train_pass(phase, 0)[2] for phase in phases]

    return Variant


# -- FLOPs and CPU memory -----------------------------------------------------------------------
def forward_flops(model: Any, x: Any) -> tuple[list[int], list[int]]:
    """Forward FLOPs (2 x multiply-adds of Conv2d and Linear) per image: modules, then heads."""
    import torch
    from torch import nn

    counts: dict[nn.Module, int] = {}

    def hook(m: nn.Module, inputs: Any, out: Any) -> None:
        per_image = out.numel() // out.shape[0]
        if isinstance(m, nn.Conv2d):
            macs = per_image * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            macs = per_image * m.in_features
        counts[m] = counts.get(m, 0) + 2 * macs

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    model.eval()
    try:
        with torch.no_grad():
            model.per_module_logits(x)
    finally:
        for h in handles:
            h.remove()

    def total(part: nn.Module) -> int:
        return sum(counts.get(m, 0) for m in part.modules())

    return [total(m) for m in model.trunk], [total(h) for h in model.heads]


def _tensor_memory_class() -> type:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class TensorMemoryMode(TorchDispatchMode):
        """Live and peak bytes of the tensors allocated while active (any device).

        The CPU has no allocator statistics, and ru_maxrss only ever grows in a process, so
        each op's new output storages are counted until they are freed. Storages an op only
        returns (in-place ops, views) are not new; tensors made before entry are not counted.
        """

        def __init__(self) -> None:
            super().__init__()
            self.live = self.peak = 0
            self.seen: set[int] = set()

        def _freed(self, key: int, nbytes: int) -> None:
            self.seen.discard(key)
            self.live -= nbytes

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            tensors = tree_leaves((args, kwargs))
            inputs = {id(t.untyped_storage()) for t in tensors if isinstance(t, torch.Tensor)}
            for t in tree_leaves(out):
                if not isinstance(t, torch.Tensor):
                    continue
                storage = t.untyped_storage()  # one Python object per storage while it lives
                key = id(storage)
                if key in inputs or key in self.seen:
                    continue
                self.seen.add(key)
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._freed, key, storage.nbytes())
            return out

    return TensorMemoryMode


def tensor_memory() -> Any:
    """A context manager whose `.peak` is the peak bytes of tensors allocated inside it."""
    return _tensor_memory_class()()


# -- the report ---------------------------------------------------------------------------------
def _table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _mib(n: float) -> float:
    return n / 2**20


def to_markdown(r: dict[str, Any]) -> str:
    """bench.json's figures as markdown tables."""
    c = r["config"]
    parts = [
        "# workbench bench" + (" (quick)" if r["quick"] else ""),
        f"{r['created']} · {r['device']} ({r['device_name']}) · torch {r['torch']} · "
        f"{r['cpu_threads']} CPU threads · load average {r['load_average_start'][0]:.1f} at "
        f"start, {r['load_average_end'][0]:.1f} at end · {r['repeats']} repeats after a warm-up "
        f"· medians · {r['wall_time_s']:.0f} s in all",
        f"Network: {c['arch']}, width {c['width'] or 'default'}, {c['n_modules']} modules, "
        f"aux depth {c['aux_depth']}, batch {c['batch_size']}; data: {c['dataset']}, "
        f"{r['data']['n_train']} training images. Forward: "
        f"{r['flops']['forward_per_image'] / 1e6:.2f} MFLOP per image (trunk and every head).",
    ]
    m = r["methods"]
    if "skipped" not in m:
        rows = []
        for name in METHODS:
            e = m[name]
            row = [name, e["epoch_all_modules_s"], e["images_per_s"], e["speed_vs_end_to_end"]]
            row.append(e["train_tflops_per_s"])
            if "fraction_of_peak" in e:
                row.append(f"{100 * e['fraction_of_peak']:.1f}%")
            rows.append(row)
        heads = ["method", "s per epoch of all modules", "images/s", "speed vs end-to-end"]
        heads.append("train TFLOP/s")
        if r["peak_tflops"]:
            heads.append(f"of {r['peak_tflops']} peak")
        parts += ["## Methods", _table(heads, rows)]
        per_module = [
            [k + 1, *(m[name]["per_module_images_per_s"][k] for name in METHODS)]
            for k in range(m["n_modules"])
        ]
        parts += [
            "Images/s while module k trains (sequential: its own pass, frozen prefix included; "
            "parallel and end-to-end: one pass trains every module):",
            _table(["module", *METHODS], per_module),
        ]
    mem = r["memory"]
    if "skipped" not in mem:
        rows = [
            [name, _mib(mem[name]["peak_bytes"]), mem["ratio_to_end_to_end"].get(name, 1.0)]
            for name in (*METHODS, WITH_GRAD)
        ]
        parts += [
            f"## Peak training memory, {mem['n_modules']} modules",
            _table(["method", "peak MiB", "layer-wise / end-to-end"], rows),
            f"Measured as: {mem['how']}.",
        ]
    d = r["depth"]
    if "skipped" not in d:
        rows = [
            [
                row["n_modules"],
                *(
                    (row["sequential_s"], row["parallel_s"], row["sequential_to_parallel"],
                     row["sequential_growth"], row["parallel_growth"])
                    if "skipped" not in row
                    else (row["skipped"], "", "", "", "")
                ),
            ]
            for row in d["rows"]
        ]  # fmt: skip
        heads = ["modules", "sequential s", "parallel s", "seq / par", "seq growth", "par growth"]
        parts += ["## Cost against depth (s per epoch of all modules)", _table(heads, rows)]
    cb = r["callbacks"]
    if "skipped" in cb:
        parts += ["## Live plots", f"Skipped: {cb['skipped']}"]
    else:
        parts += [
            "## Live plots",
            _table(
                ["without s", "with s", "with / without", "inside the callback s"],
                [[cb["without_s"], cb["with_s"], cb["ratio"], cb["inside_callback_s"]]],
            ),
            f"{cb['callback']}; {cb['run']}.",
        ]
    fast = r["fast_paths"] if "skipped" not in r["fast_paths"] else {}
    fast = {**fast, "compile": r["compile"]}
    rows = []
    for name, f in fast.items():
        if "skipped" in f:
            rows.append([name, f.get("what", ""), "", "", "", f"skipped: {f['skipped']}"])
            continue
        note = ""
        if "cache_build_s" in f:
            note = (
                f"cache built in {f['cache_build_s']:.3g} s; with it, one epoch: "
                f"{f['speedup_one_epoch_with_build']:.3g}x"
            )
        if "compile_s" in f:
            note = f"compile time {f['compile_s']:.3g} s"
        rows.append(
            [
                name,
                f["what"],
                f"{f['before']}: {f['before_images_per_s']:.0f}",
                f"{f['after']}: {f['after_images_per_s']:.0f}",
                f"{f['speedup']:.3g}x",
                note,
            ]
        )
    parts += [
        "## Fast paths (images/s, before and after)",
        _table(["fast path", "measured on", "before", "after", "speedup", "note"], rows),
    ]
    return "\n\n".join(parts) + "\n"
