"""What `what_is_local_learning.ipynb` shows, computed on the workbench's own nets and learners.

gradient_reach       which modules' weights each local loss sends a gradient to, layer-wise
                     (the learners the runs use) and end to end
memory_against_depth training memory of end-to-end and layer-wise training as the net grows
                     (measured as `workbench bench` measures it)
psi_parts, psi_figure  Belilovsky's invertible downsampling on a real image: its four
                     sub-images, and its inverse giving the image back exactly
trained_model, block_energies  a finished run's network, and the kinetic energy (mean
                     squared residual) of each of its residual blocks on some images
test_images          a dataset's first test images, as pixels and as the runs feed them
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from workbench.config import Config


def test_images(config: Config, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """The first `n` test images of `config`'s dataset: (uint8 pixels, normalized as the runs
    feed them, labels)."""
    from workbench.data import load_data

    data = load_data(config)
    pixels, labels = data.test_x[:n], data.test_y[:n]
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return pixels, (pixels.float() / 255 - mean) / std, labels


def gradient_reach(config: Config, x: Tensor, y: Tensor) -> list[dict[str, Any]]:
    """For each module's local loss, the modules whose weights get a gradient from it: one
    step of each module's LocalLearner (layer-wise: its input is the previous module's
    detached output), then one step of the whole net's learner (end to end). lr 0: nothing
    is changed by looking."""
    from workbench.local import LocalInputs, LocalLearner
    from workbench.models import build_model
    from workbench.training.device import choose_precision

    model = build_model(config)
    fp32, cpu = choose_precision("fp32", None), torch.device("cpu")

    def learner(modules: Sequence[int], joint: bool) -> Any:
        trunk, heads = [model.trunk[k] for k in modules], [model.heads[k] for k in modules]
        return LocalLearner(config, modules, trunk, heads, fp32, cpu, torch.contiguous_format,
                            joint=joint)  # fmt: skip

    def reached() -> list[int]:
        return [
            k + 1
            for k, module in enumerate(model.trunk)
            if any(p.grad is not None and bool(p.grad.any()) for p in module.parameters())
        ]

    rows, h = [], x
    for k in range(len(model.trunk)):
        model.zero_grad(set_to_none=True)
        h = learner([k], joint=False).step(LocalInputs(h, y), lr=0.0).output
        rows.append({"training": "layer-wise", "loss of module": k + 1, "reaches": reached()})
    last = len(model.trunk)
    model.zero_grad(set_to_none=True)
    learner(range(last), joint=True).step(LocalInputs(x, y), lr=0.0)
    rows.append({"training": "end-to-end", "loss of module": last, "reaches": reached()})
    return rows


def memory_against_depth(config: Config, depths: Sequence[int]) -> list[dict[str, Any]]:
    """Peak training memory (bench.memory.training_peak_bytes) of a ResNet of each depth in
    blocks, end to end and layer-wise with a module per block (all trained at once)."""
    from workbench.bench.memory import training_peak_bytes

    rows = []
    for blocks in depths:
        net = config.replace(arch="resnet", n_units=blocks)
        e2e = training_peak_bytes(net.replace(method="end-to-end", n_modules=1))
        local = training_peak_bytes(net.replace(method="parallel", n_modules=blocks))
        rows.append({"blocks": blocks, "end_to_end_mib": e2e / 2**20,
                     "layer_wise_mib": local / 2**20, "ratio": local / e2e})  # fmt: skip
    return rows


def psi_parts(image: Tensor) -> tuple[Tensor, Tensor]:
    """(psi's four sub-images of a C x H x W image, each C x H/2 x W/2; psi^-1 of them)."""
    from workbench.models import InvertibleDownsampling

    psi = InvertibleDownsampling()
    c, h, w = image.shape
    y = psi(image[None].float())  # 4C x H/2 x W/2, channel 4c + i is sub-image i of channel c
    parts = y[0].view(c, 4, h // 2, w // 2).transpose(0, 1)
    return parts, psi.inverse(y)[0]


def psi_figure(image: Tensor) -> Any:
    """The image beside psi's four sub-images (each pixel of a 2x2 block goes to one of them)."""
    from plotly.subplots import make_subplots

    parts, _ = psi_parts(image)
    names = ["the image", "top left", "top right", "bottom left", "bottom right"]
    fig = make_subplots(rows=1, cols=5, subplot_titles=names)
    for i, picture in enumerate([image.float(), *parts]):
        rgb = picture.expand(3, -1, -1) if picture.shape[0] == 1 else picture
        fig.add_image(z=rgb.permute(1, 2, 0).clamp(0, 255).byte().numpy(), row=1, col=i + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=40, b=10),
                      title="psi: space to depth, nothing lost")  # fmt: skip
    return fig


def trained_model(run_dir: str | Path) -> Any:
    """A finished run's network: its config's model with each module's trained weights (the
    module checkpoints hold tensors only: loading them runs no code)."""
    from workbench.models import build_model

    folder = Path(run_dir)
    config = Config.from_dict(json.loads((folder / "config.json").read_text()))
    model = build_model(config)
    for k, (module, head) in enumerate(zip(model.trunk, model.heads), start=1):
        state = torch.load(folder / "checkpoints" / f"module_{k}.pt", weights_only=True)
        module.load_state_dict(state["trunk"])
        head.load_state_dict(state["head"])
    return model.eval()


def block_energies(model: Any, x: Tensor) -> list[float]:
    """The kinetic energy of each residual block on images x: mean(r^2) of its residual branch
    r, the quantity TRGL's term penalises, block by block in depth order."""
    energies = []
    with torch.no_grad():
        for module in model.trunk:
            for unit in module:
                if hasattr(unit, "forward_residual"):
                    x, r = unit.forward_residual(x)
                    energies.append(float(r.pow(2).mean()))
                else:
                    x = unit(x)
    return energies
