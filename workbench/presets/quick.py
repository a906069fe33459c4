"""Small runs on the embedded digits: what a first run and a smoke test use."""

from __future__ import annotations

from workbench.presets.preset import Preset

PRESETS: dict[str, Preset] = {
    "quick": Preset(
        "The default run: a 4-layer greedy CNN on the embedded 5,000 MNIST digits, CPU-sized."
    ),
    "quick-resnet": Preset(
        "ResNet-20 in 3 modules, parallel, with the kinetic term, on the embedded digits.",
        dict(
            arch="resnet20",
            n_modules=3,
            method="parallel",
            regularization="kinetic",
            aux_depth=1,
            epochs=3,
        ),
    ),
    "quick-vgg": Preset(
        "VGG-11 (BN, quarter width) in 4 modules, sequential, on the embedded digits.",
        dict(arch="vgg11", width=16, n_modules=4, epochs=2),
    ),
}
