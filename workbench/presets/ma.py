"""Ma, Yu, Li and Wang, "Why Layer-Wise Learning is Hard to Scale-up and a Possible Solution
via Accelerated Downsampling" (2020, arXiv 2010.08038): the accelerated schedule beside the
standard one."""

from __future__ import annotations

from workbench.presets.preset import Preset

PRESETS: dict[str, Preset] = {
    "ma-resnet32-accelerated": Preset(
        "Ma et al.: ResNet-32 in 8 sequential modules, downsampling moved toward the input, "
        "with per-module linear probes. Compare with --schedule standard. No paper number: "
        "their exact settings are not published.",
        dict(
            dataset="cifar10",
            arch="resnet32",
            n_modules=8,
            method="sequential",
            schedule="accelerated",
            probe=True,
            aux_depth=2,
            epochs=10,
            lr=0.05,
            lr_schedule="cosine",
        ),
    ),
}
