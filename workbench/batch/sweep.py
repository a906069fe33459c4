"""`workbench sweep GRID.yaml`: placeholder wiring, filled in by the sweep implementation."""

from __future__ import annotations

import argparse


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sweep command's flags."""
    parser.add_argument("grid", help="YAML grid file")


def sweep_main(args: argparse.Namespace) -> int:
    """Run the sweep; returns the exit code."""
    raise NotImplementedError
