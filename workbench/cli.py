"""The `workbench` command: `workbench run [--preset NAME] [--FIELD VALUE ...]` and
`workbench presets`.

Flags are the config's field names with dashes; a bad value is refused in one line, before any
training, with exit code 2. A run that fails for a reason the user can act on (it diverged, a
disk filled up) ends in one line and exit code 1, as does a stopped one. After its first steps
a run prints its estimated time and memory; above a day it stops there unless `--yes` was
given. A run estimated to need more memory than the device has available is refused before
training (exit code 2) unless `--yes` was given. SIGTERM, SIGINT and SIGHUP stop a run at its
next step (exit code 1, status 'stopped'); the same command resumes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

from workbench.config import Config, ConfigError, config_fields
from workbench.events import (
    CONFIRM_ABOVE_S,
    ESTIMATE,
    TqdmProgress,
    describe_estimate,
    format_duration,
)
from workbench.presets import PRESETS, Preset, preset
from workbench.records import RunFailed, Status, format_results


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _flag_help(f: dataclasses.Field) -> str:
    return f"default: {f.default!r}"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="workbench", description="Layer-wise learning workbench.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser("run", help="train one experiment and print per-module accuracy")
    run.add_argument("--preset", help="start from a named preset (see `workbench presets`)")
    run.add_argument("--config", help="start from a config.json (a run folder's, say)")
    for f in config_fields():
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            run.add_argument(flag, dest=f.name, nargs="?", const="true", help=_flag_help(f))
        else:
            run.add_argument(flag, dest=f.name, help=_flag_help(f))
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument(
        "--yes",
        action="store_true",
        help=f"go on when the run is estimated to take over {format_duration(CONFIRM_ABOVE_S)} "
        "(without it, such a run stops after its first steps, resumable), or to need more "
        "memory than the device has available (without it, such a run is refused before "
        "training)",
    )
    presets = commands.add_parser("presets", help="list the presets and the fields each one sets")
    presets.add_argument(
        "--json",
        action="store_true",
        help="one JSON object keyed by preset name: description, paper_number, metric, "
        "reference, values, trunk_params and head_params (per module)",
    )
    # the batch and benchmark commands live beside their code; each adds its own flags
    from workbench.batch.reproduce import add_reproduce_arguments
    from workbench.batch.sweep import add_sweep_arguments
    from workbench.bench import add_bench_arguments
    from workbench.doctor import add_doctor_arguments

    add_sweep_arguments(commands.add_parser("sweep", help="run a grid of experiments"))
    add_bench_arguments(commands.add_parser("bench", help="benchmark the training methods"))
    add_reproduce_arguments(
        commands.add_parser("reproduce", help="paper presets' runs beside the papers' numbers")
    )
    add_doctor_arguments(
        commands.add_parser("doctor", help="check that the workbench works here, and how fast")
    )
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Preset or config file first, then every flag given on the command line on top."""
    overrides = {
        f.name: getattr(args, f.name) for f in config_fields() if getattr(args, f.name) is not None
    }
    if args.preset and args.config:
        raise ConfigError("preset: give --preset or --config, not both")
    if args.config:
        try:
            base = json.loads(open(args.config).read())
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"config: cannot read {args.config!r} ({e}); allowed: a JSON file"
            ) from None
        return Config.from_dict({**base, **overrides})
    if args.preset:
        return preset(args.preset, **overrides)
    return Config.from_dict(overrides)


def list_presets() -> str:
    rows = []
    for name, p in PRESETS.items():
        number = f" [paper: {p.paper_number}%]" if p.paper_number is not None else ""
        rows.append(f"{name}{number}\n    {p.description}")
        if p.values:
            rows.append(
                "    " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in p.values.items())
            )
    return "\n".join(rows)


def preset_facts(name: str, p: Preset) -> dict[str, Any]:
    """What `presets --json` says of one preset, parameter counts included (built on the meta
    device: nothing is allocated, so ImageNet-sized nets are counted in a moment)."""
    from workbench.models import parameter_counts

    return {
        "description": p.description,
        "paper_number": p.paper_number,
        "metric": p.metric,
        "reference": p.reference,
        "values": p.values,
        **parameter_counts(p.config()),
    }


class EstimateGate:
    """A run's callback: prints the estimate once known; stops a run estimated over
    CONFIRM_ABOVE_S unless `yes` (the run is left 'stopped', and resumes when rerun)."""

    def __init__(self, yes: bool, stop: threading.Event):
        self.yes, self.stop = yes, stop

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event != ESTIMATE:
            return
        from tqdm.auto import tqdm  # tqdm.write keeps a progress bar intact

        tqdm.write(f"workbench: {describe_estimate(info)}", file=sys.stderr)
        if info["seconds"] > CONFIRM_ABOVE_S and not self.yes:
            self.stop.set()
            tqdm.write(
                f"workbench: stopping: that is over {format_duration(CONFIRM_ABOVE_S)}; run the "
                "same command with --yes to go on (it resumes from the run folder)",
                file=sys.stderr,
            )


def _print(text: str) -> None:
    """Print to stdout; a reader that went away (`| head`) ends the output quietly."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()


def _silence_stdout() -> None:
    # as Python's documentation advises: later writes (and the flush at exit) go nowhere,
    # instead of a second BrokenPipeError
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """The `workbench` command; returns its exit code."""
    try:
        code = _main(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # printed by a subcommand to a reader that went away
        _silence_stdout()
        return 141  # what a shell reports for a process ended by SIGPIPE


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "presets":
        if args.json:
            facts = {name: preset_facts(name, p) for name, p in PRESETS.items()}
            _print(json.dumps(facts, indent=2))
        else:
            _print(list_presets())
        return 0
    if args.command == "sweep":
        from workbench.batch.sweep import sweep_main

        return sweep_main(args)
    if args.command == "bench":
        from workbench.bench import bench_main

        return bench_main(args)
    if args.command == "reproduce":
        from workbench.batch.reproduce import reproduce_main

        return reproduce_main(args)
    if args.command == "doctor":
        from workbench.doctor import doctor_main

        return doctor_main(args)
    from workbench.training import run_experiment  # torch import only when training

    stop = threading.Event()
    try:
        config = config_from_args(args)
        callbacks = [] if args.quiet else [TqdmProgress(file=sys.stderr)]
        callbacks.append(EstimateGate(args.yes, stop))
        summary = run_experiment(config, callbacks=callbacks, stop=stop, check_memory=not args.yes)
    except ConfigError as e:
        print(f"workbench: error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:  # summary.json says failed, with this error, where it could
        print(f"workbench: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before training started (loading data, say)
        print("workbench: interrupted", file=sys.stderr)
        return 130
    from workbench.training.distributed import is_follower

    if not is_follower():  # under torchrun, rank 0 alone prints the results
        _print(format_results(summary))
        if summary["status"] == Status.STOPPED:
            by = f" by {summary['stopped_by']}" if summary.get("stopped_by") else ""
            print(
                f"workbench: stopped{by} after {summary.get('epochs_done') or 0} epoch(s); "
                "the same command resumes it",
                file=sys.stderr,
            )
    return 0 if summary["status"] == Status.FINISHED else 1


if __name__ == "__main__":
    sys.exit(main())
