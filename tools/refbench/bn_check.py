"""TRGL's per-module test accuracy two ways: with BN's running averages (what both codes report)
and with the statistics re-estimated on the training images (a cumulative average over one
unaugmented pass), for the reference code and for a workbench run, by the same procedure.

    python tools/refbench/bn_check.py ref SEED EPOCHS [RUN_DIR]  # module-wise's own training
    python tools/refbench/bn_check.py wb RUN_DIR                 # a finished run_wb_trgl.sh run

The reference side imports resnet20-2modules-cifar10.py from $REFBENCH_DIR/module-wise and
trains with its own train_par on its own loaders (the first $REFBENCH_NTRAIN training and
$REFBENCH_NTEST test images), so its running-average accuracy is the number its log prints.
At 3 epochs of lr 0.002 the running averages lag the weights (momentum 0.1 averages about the
last 10 batches, and the weights move); the re-estimated accuracy is what the weights give.
With RUN_DIR, the reference side also tests its trained modules (running averages) on that
workbench run's test tensors ("running_on_wb_test"): equal to "running" up to the two codes'
normalization constants, it shows that both evaluation pipelines give one number for one set
of weights, so a gap between the codes lies in what was trained.
Prints one JSON line: {"side", "running": [...], "reestimated": [...]}.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys
from functools import partial
from pathlib import Path

import torch
from torch import nn


def _reset(modules: list[nn.Module]) -> None:
    for module in modules:
        for bn in module.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                bn.reset_running_stats()
                bn.momentum = None  # a cumulative average


def reference(seed: int, epochs: int, run_dir: str | None = None) -> dict:
    import numpy as np
    import torchvision.transforms as T
    from torch.utils.data import DataLoader, Subset

    folder = Path(os.environ["REFBENCH_DIR"]) / "module-wise"
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("ref", folder / "resnet20-2modules-cifar10.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    ref.device = torch.device("cpu")
    torch.manual_seed(seed)  # as its experiment() does, then the same calls in the same order
    np.random.seed(seed)
    train, val, test, shape, classes, mean, std = ref.dataloaders("cifar10", 128, None, 0.0, 1.0)
    init = partial(ref.initialize, "orthogonal", 0.1)
    encoder = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
    side = list(encoder(torch.ones(*shape)).shape)[2]

    def featureshape(i: int) -> list[int]:
        return [1, [32, 64][i], side // [2, 4][i], side // [2, 4][i]]

    modules = [
        ref.ResModule1(featureshape(0), classes, "1CNN", 16, init),
        ref.ResModule2(featureshape(1), classes, "1CNN", 8, init),
    ]
    sgd = [
        torch.optim.SGD(m.parameters(), lr=0.002, momentum=0.9, weight_decay=2e-4) for m in modules
    ]
    loss = nn.CrossEntropyLoss(label_smoothing=0.1)
    ref.train_par(modules, sgd, None, loss, 1, [0.5, 1.0], 0, 1, "increasing", 1, 0, 0, epochs,
                  train, val, test)  # fmt: skip
    running = ref.test_par(modules, loss, test)
    plain = Subset(
        ref.dataloaders.__globals__["CIFAR10"](
            root=os.environ["REFBENCH_CIFAR"],
            train=True,
            download=False,
            transform=T.Compose([T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]),
        ),
        range(int(os.environ.get("REFBENCH_NTRAIN", 5000))),
    )
    copies = [copy.deepcopy(m) for m in modules]
    _reset(copies)
    with torch.no_grad():
        for x, _ in DataLoader(plain, batch_size=128):
            for m in copies:
                m.train()
                _, x, _ = m(x)
    result = {"side": "ref", "running": running, "reestimated": ref.test_par(copies, loss, test)}
    if run_dir is not None:
        for m in modules:
            m.eval()
        correct, seen = [0] * len(modules), 0
        with torch.no_grad():
            for x, y in _workbench_test(run_dir):
                for k, m in enumerate(modules):
                    out, x, _ = m(x)
                    correct[k] += int((out.argmax(1) == y).sum())
                seen += len(y)
        result["running_on_wb_test"] = [c / seen for c in correct]
    return result


def _workbench_run(run_dir: str):
    """A finished workbench run's config, its data and the normalization it trained with."""
    from workbench.config import Config
    from workbench.data import load_data

    saved = json.loads((Path(run_dir) / "config.json").read_text())
    config = Config(**{k: v for k, v in saved.items() if k in Config.__dataclass_fields__})
    data = load_data(config)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (data.mean, data.std))
    return config, data, mean, std


def _batches(x, y, size: int, mean, std):
    """uint8 images in order, normalized, in batches of `size`, with their labels."""
    for i in range(0, len(y), size):
        yield (x[i : i + size].float() / 255 - mean) / std, y[i : i + size]


def _workbench_test(run_dir: str):
    """A workbench run's test images, normalized as it normalizes them, in batches of 500."""
    _, data, mean, std = _workbench_run(run_dir)
    return _batches(data.test_x, data.test_y, 500, mean, std)


def workbench(run_dir: str) -> dict:
    from workbench.models.net import build_model

    config, data, mean, std = _workbench_run(run_dir)
    model = build_model(config)
    state = torch.load(Path(run_dir) / "checkpoints" / "last.pt", weights_only=True)
    model.load_state_dict(state["model"])

    def accuracies(net: nn.Module) -> list[float]:
        net.eval()
        correct = [0] * len(net.trunk)
        with torch.no_grad():
            for x, y in _batches(data.test_x, data.test_y, 500, mean, std):
                for k, (trunk, head) in enumerate(zip(net.trunk, net.heads, strict=True)):
                    x = trunk(x)
                    correct[k] += int((head(x).argmax(1) == y).sum())
        return [c / len(data.test_y) for c in correct]

    running = accuracies(model)
    _reset([model])
    model.train()
    with torch.no_grad():
        for x, _ in _batches(data.train_x, data.train_y, 128, mean, std):
            for trunk, head in zip(model.trunk, model.heads, strict=True):
                x = trunk(x)
                head(x)
    return {"side": "wb", "running": running, "reestimated": accuracies(model)}


if __name__ == "__main__":
    if sys.argv[1:2] == ["ref"]:
        result = reference(int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:5])
    else:
        result = workbench(sys.argv[2])
    print(json.dumps(result))
