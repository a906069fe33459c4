"""The sweep behind why_layerwise_fails_to_scale.ipynb's settings: a CIFAR ResNet of each depth
trained end to end, layer-wise in 2 modules and in one module per block, at equal budgets
(layer-wise in parallel: every module on every batch), over seeds; prints each variant's
network accuracy after every epoch (mean, sd) and where the curves cross.

    python tools/crossover_sweep.py --data-dir CIFAR --blocks 6 12 18 --out runs/crossover

On 2 CPU cores, 5,000 images, width 8 and 12 epochs trained about 6, 9 and 20-30 minutes for 6,
12 and 18 blocks with 3 seeds. Runs already in --out are reused (run_series resumes a sweep).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench import Config
from workbench.batch.series import run_series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="a torchvision CIFAR-10 root")
    parser.add_argument("--allow-modified-copy", action="store_true")
    parser.add_argument("--blocks", type=int, nargs="+", default=[6, 12, 18])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/crossover")
    args = parser.parse_args()
    for blocks in args.blocks:
        base = Config(
            dataset="cifar10", data_dir=args.data_dir, allow_modified_copy=args.allow_modified_copy,
            n_train=args.n_train, n_test=1000, epochs=args.epochs, lr=0.1, arch="resnet",
            n_units=blocks, width=args.width, n_modules=2, batch_size=128, device=args.device,
            method="parallel", aux_depth=1,
        )  # fmt: skip
        many = f"layer-wise K={blocks}"
        variants = {"end-to-end": {"method": "end-to-end"}, "layer-wise K=2": {},
                    many: {"n_modules": blocks}}  # fmt: skip
        out = Path(args.out) / f"blocks-{blocks}"
        series = run_series(base, variants, out, seeds=list(range(args.seeds)))
        print(f"== {blocks} blocks: network test accuracy after each epoch (mean, sd)")
        for row in series.curve_summary():
            print(f"{row['variant']:>18} {row['epoch']:>3} {row['test_acc_mean']:.3f} "
                  f"{row['test_acc_sd']:.3f}")  # fmt: skip
        print(series.crossing("end-to-end", "layer-wise K=2"))
        print(series.crossing("end-to-end", many))
        series.save(out, png=False)


if __name__ == "__main__":
    main()
