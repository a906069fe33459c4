"""`workbench bench`: placeholder wiring, filled in by the benchmark implementation."""

from __future__ import annotations

import argparse


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bench command's flags."""
    parser.add_argument("--quick", action="store_true")


def bench_main(args: argparse.Namespace) -> int:
    """Run the benchmark; returns the exit code."""
    raise NotImplementedError
