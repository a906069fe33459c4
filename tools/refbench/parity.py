"""Per-module accuracy parity: the papers' code and the workbench, trained alike over seeds.

    python tools/refbench/parity.py --epochs 3 --seeds 0,1,2 --n-train 5000 --n-test 2000
    python tools/refbench/parity.py --configs trgl --variant head1x1 --wb-flags "..." ...

For each config (layercnn, dgl, trgl: see README.md) and seed, the reference command and the
workbench's equivalent run one after the other (run_ref_*.sh, run_wb_*.sh, with EPOCHS, SEED,
N_TRAIN and N_TEST set), both on the first N training and test images of the CIFAR-10 copy
(the workbench with --subset first), so the data is the same. Each run's last-epoch test
accuracy per module, and its running training accuracy over that epoch (as each code prints
it; free of the test-time BN averages' noise), are appended to OUT/parity.jsonl (a run already
there is not run again, so an interrupted parity run resumes); then OUT/parity-eE.md and
OUT/parity-eE.csv (E the epochs) give, per config, variant, split and module, each side's mean
and standard deviation over the seeds, the gap (workbench minus reference) and the combined
spread sqrt(sd_ref^2 + sd_wb^2). A gap is "beyond" when it is larger than the combined spread.

`--variant NAME --wb-flags "..."` runs the workbench side again with extra flags (an experiment
that may remove a gap); the reference side of a variant is the plain one's.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = ("layercnn", "dgl", "trgl")


# -- each side's per-module accuracies ----------------------------------------------------------
def reference_accuracies(
    config: str, run_dir: Path, log: Path, epochs: int
) -> tuple[list[float], list[float]]:
    """The reference run's (test, train) accuracy per module at its last epoch, as fractions;
    train is the running average over that epoch's batches in training mode, as each code
    prints it."""
    if config in ("layercnn", "dgl"):
        # layerCNN's cifar.py: "n: 0, epoch 2, train 41.2, test 40.1, " per layer (epochs from 0);
        # DGL's cifar_dgl.py: "n: 1, epoch 3, loss: 1.2, train top1:40.1 test top1:38.2 "
        number, n_epoch = r"([\d.]+)", r"n: (\d+), epoch (\d+)"
        if config == "layercnn":
            pattern, last = rf"{n_epoch}, train {number}, test {number}", epochs - 1
        else:
            pattern = rf"{n_epoch}, loss: [\d.]+, train top1:{number} test top1:{number}"
            last = epochs
        found: dict[int, tuple[float, float]] = {}
        for path in run_dir.glob("*.log"):
            for m in re.finditer(pattern, path.read_text()):
                if int(m.group(2)) == last:
                    found[int(m.group(1))] = (float(m.group(4)) / 100, float(m.group(3)) / 100)
        return [found[k][0] for k in sorted(found)], [found[k][1] for k in sorted(found)]
    # trgl: the parallel script prints each epoch's "Train accuracies [0.30, 0.33]" and
    # "Val accuracies [0.31, 0.35]" (fractions)
    lines = log.read_text().splitlines()

    def last_list(prefix: str) -> list[float]:
        values = [line.split(prefix, 1)[1] for line in lines if line.startswith(prefix)]
        return [float(v) for v in ast.literal_eval(values[-1].strip())]

    return last_list("Val accuracies"), last_list("Train accuracies")


def workbench_accuracies(run_dir: Path) -> tuple[list[float], list[float]]:
    """The workbench run's (test, train) accuracy per module: the summary's test accuracies and
    each module's training accuracy over its last epoch (metrics.jsonl)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary.get("status") != "finished":
        raise RuntimeError(f"{run_dir}: the run ended {summary.get('status')}")
    train: dict[int, tuple[int, float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("split") == "train" and row["epoch"] >= train.get(row["module"], (0, 0))[0]:
            train[row["module"]] = (row["epoch"], row["acc"])
    return list(summary["per_module_test_acc"]), [train[k][1] for k in sorted(train)]


# -- running ------------------------------------------------------------------------------------
def run_side(config: str, side: str, seed: int, args: argparse.Namespace, flags: str, tag: str):
    """One run of run_{side}_{config}.sh: (per-module test accuracies, train accuracies, s)."""
    rb = Path(os.environ["REFBENCH_DIR"])
    env = {
        **os.environ,
        "EPOCHS": str(args.epochs),
        "SEED": str(seed),
        "N_TRAIN": str(args.n_train),
        "N_TEST": str(args.n_test),
        "TAG": tag,
        "WB_FLAGS": flags,
        "TIMES": str(Path(args.out) / "times.txt"),
    }
    start = time.perf_counter()
    done = subprocess.run(["bash", str(HERE / f"run_{side}_{config}.sh")], env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"run_{side}_{config}.sh (seed {seed}, {tag}) exited {done.returncode}")
    run_dir = max((rb / "runs").glob(f"{side}_{config}_{tag}_*"), key=os.path.getmtime)
    if side == "wb":
        return (*workbench_accuracies(run_dir), seconds)
    log = max((rb / "logs").glob(f"ref_{config}_{tag}_*.log"), key=os.path.getmtime)
    return (*reference_accuracies(config, run_dir, log, args.epochs), seconds)


def load_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def key(row: dict) -> tuple:
    return (row["config"], row["side"], row["variant"], row["seed"], row["epochs"],
            row["n_train"], row["n_test"])  # fmt: skip


# -- the table ----------------------------------------------------------------------------------
def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def verdict(gap: float, spread: float) -> str:
    """`beyond` where the gap is larger than the combined spread; `n/a` with one seed a side."""
    if math.isnan(spread):
        return "n/a"
    return "beyond" if abs(gap) > spread else "within"


def table(rows: list[dict], args: argparse.Namespace) -> list[dict]:
    """Per config, variant, split (test; train: the last epoch's running training accuracy)
    and module: each side's mean and sd, the gap and the combined spread."""
    same = [
        r
        for r in rows
        if (r["epochs"], r["n_train"], r["n_test"]) == (args.epochs, args.n_train, args.n_test)
    ]
    out = []
    for config in CONFIGS:
        ref = [r for r in same if r["config"] == config and r["side"] == "ref"]
        if not ref:
            continue
        for variant in sorted(
            {r["variant"] for r in same if r["config"] == config and r["side"] == "wb"}
        ):
            wb = [
                r
                for r in same
                if r["config"] == config and r["side"] == "wb" and r["variant"] == variant
            ]
            for split, field in (("test", "acc"), ("train", "train_acc")):
                if not all(field in r for r in ref + wb):  # rows stored before train_acc was
                    continue
                for k in range(min(len(r[field]) for r in ref + wb)):
                    a, b = [r[field][k] for r in ref], [r[field][k] for r in wb]
                    (ma, sa), (mb, sb) = mean_sd(a), mean_sd(b)
                    spread = math.sqrt(sa**2 + sb**2)
                    out.append({
                        "config": config, "variant": variant, "split": split, "module": k + 1,
                        "ref_mean": ma, "ref_sd": sa, "ref_seeds": len(a),
                        "wb_mean": mb, "wb_sd": sb, "wb_seeds": len(b),
                        "gap": mb - ma, "combined_sd": spread,
                        "verdict": verdict(mb - ma, spread),
                    })  # fmt: skip
    return out


def write_table(lines: list[dict], args: argparse.Namespace) -> str:
    """OUT/parity-eE.md (returned) and OUT/parity-eE.csv, E the epochs."""
    out = Path(args.out)
    md = [
        f"epochs {args.epochs} (per module where sequential), the first {args.n_train} "
        f"training and {args.n_test} test images of the CIFAR-10 copy, BN running averages; "
        "test: the last epoch's test accuracy, train: its running training accuracy",
        "",
        "| config | variant | split | module | reference mean (sd) | workbench mean (sd) | gap "
        "| combined sd | |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in lines:
        ref = f"{r['ref_mean']:.3f} ({r['ref_sd']:.3f}, n={r['ref_seeds']})"
        wb = f"{r['wb_mean']:.3f} ({r['wb_sd']:.3f}, n={r['wb_seeds']})"
        md.append(
            f"| {r['config']} | {r['variant']} | {r['split']} | {r['module']} | {ref} | {wb} "
            f"| {r['gap']:+.3f} | {r['combined_sd']:.3f} | {r['verdict']} |"
        )
    text = "\n".join(md) + "\n"
    (out / f"parity-e{args.epochs}.md").write_text(text)
    columns = list(lines[0]) if lines else []
    csv = [",".join(columns)] + [",".join(str(r[c]) for c in columns) for r in lines]
    (out / f"parity-e{args.epochs}.csv").write_text("\n".join(csv) + "\n")
    return text


def run_all(args: argparse.Namespace, store: Path) -> None:
    """Every (seed, config, side) not yet in the store, seed by seed, reference then workbench."""
    for seed in (int(s) for s in args.seeds.split(",")):
        for config in args.configs.split(","):
            for side in args.sides.split(","):
                variant, flags = (args.variant, args.wb_flags) if side == "wb" else ("plain", "")
                row = {"config": config, "side": side, "variant": variant, "seed": seed}
                row.update(epochs=args.epochs, n_train=args.n_train, n_test=args.n_test)
                if any(key(r) == key(row) for r in load_rows(store)):
                    continue
                tag = f"parity-{variant}-e{args.epochs}-s{seed}"
                acc, train_acc, seconds = run_side(config, side, seed, args, flags, tag)
                row.update(acc=acc, train_acc=train_acc, seconds=round(seconds, 1), wb_flags=flags)
                with open(store, "a") as f:
                    f.write(json.dumps(row) + "\n")
                shown = [round(a, 4) for a in acc]
                print(f"parity: {config} {side} {variant} seed {seed}: {shown} ({seconds:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--variant", default="plain", help="a name for --wb-flags' runs")
    parser.add_argument("--wb-flags", default="", help="extra `workbench run` flags")
    parser.add_argument("--sides", default="ref,wb")
    parser.add_argument("--out", default=None, help="default: $REFBENCH_DIR/parity")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    if "REFBENCH_DIR" not in os.environ or "REFBENCH_CIFAR" not in os.environ:
        print("parity.py: set REFBENCH_DIR and REFBENCH_CIFAR (see README.md)", file=sys.stderr)
        return 2
    args.out = args.out or str(Path(os.environ["REFBENCH_DIR"]) / "parity")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    store = Path(args.out) / "parity.jsonl"
    if args.variant == "plain" and args.wb_flags:
        print("parity.py: --wb-flags needs a --variant name", file=sys.stderr)
        return 2
    if not args.table_only:
        run_all(args, store)
    print(write_table(table(load_rows(store), args), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
