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
    whole_runs  a whole run of each method, split into data, training, evaluation, BN
                re-estimates, callbacks and checkpoint writes
    callbacks   a run with and without the live plots
    fast_paths  each fast path of the engine, before and after
    pipeline    parallel's modules in worker processes (pipeline true) against one process
    ddp         one run in 2 torchrun processes against 1 process (--quick skips it; pick it
                with --only ddp)
    compile     torch.compile: compile time and steady-state speed (minutes on a CPU)
    loader      a streamed dataset's loader alone (images/s; PIL in the workers, and on CUDA
                decode_jpeg on the device) against the net's training steps: which is the
                bottleneck (the one section for a streamed dataset: --only loader --dataset
                imagefolder --data-dir ROOT; skipped for datasets held in memory)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workbench.bench.common import SECTIONS
from workbench.memory import tensor_memory

__all__ = ["add_bench_arguments", "bench_main", "tensor_memory"]


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
    arg("--memory-modules", default="2,4,8",
        help="module counts the memory section cuts the net into (default 2,4,8)")  # fmt: skip
    arg("--depths", help="module counts to scale over (quick: 2,4,8; default: 2,4,8,16)")
    arg("--batch-size", type=int, default=128, help="default 128")
    arg("--n-train", type=int, help="training images (quick: 256; default: all)")
    arg("--n-test", type=int, help="test images of the callbacks' runs (quick: 100; default all)")
    arg("--repeats", type=int, help="timed repetitions after the warm-up (quick 2, default 5)")
    arg("--threads", type=int, help="torch's CPU threads (quick: 1; default: torch's choice)")
    arg("--peak-tflops", type=float, help="the device's peak TFLOP/s, for the fraction of peak")
    arg("--skip", help=f"comma-separated sections to skip: {', '.join(SECTIONS)} "
        "(default: compile,ddp with --quick, none otherwise)")  # fmt: skip
    arg("--only", help="comma-separated sections to run, and no others (e.g. --only ddp)")


def bench_main(args: argparse.Namespace) -> int:
    """Run the benchmark; returns the exit code (2 for a bad flag)."""
    import torch

    from workbench.bench.report import to_markdown
    from workbench.bench.runner import Bench
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
