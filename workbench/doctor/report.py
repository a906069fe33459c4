"""The doctor's report as text: the verdict first, then each part as measured."""

from __future__ import annotations

from typing import Any

MIB = 2**20
GIB = 2**30


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MIB:.0f} MiB"


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GIB:.1f} GiB"


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _header(report: dict[str, Any]) -> list[str]:
    verdict = "ok" if report["passed"] else "FAILED"
    lines = [f"workbench doctor: {verdict}: {report['summary']} ({report['wall_s']:.1f} s)"]
    for part in report["skipped"]:
        lines.append(f"skipped: {part['part']}: {part['reason']}")
    for failure in report["failures"]:
        lines.append(f"failed: {failure}")
    for warning in report["warnings"]:
        lines.append(f"warning: {warning}")
    return lines


def _versions(v: dict[str, Any]) -> list[str]:
    return [
        "versions",
        f"  python {v['python']} ({v['platform']})",
        f"  torch {v['torch']}, torchvision {v['torchvision']}, CUDA runtime {v['cuda_runtime']}, "
        f"cuDNN {v['cudnn']}, NVIDIA driver {v['nvidia_driver']}",
        f"  workbench {v['workbench']}, kaleido {v['kaleido']}",
    ]


def _devices(devices: list[dict[str, Any]]) -> list[str]:
    lines = ["devices (precision=auto and tf32=true, the defaults)"]
    for d in devices:
        if d["device"] == "cpu":
            what = f"{d['name']}, {d['cores']} cores, {_gib(d['total_memory_bytes'])}"
        else:
            capability = ".".join(str(c) for c in d["capability"])
            what = f"{d['name']}, compute capability {capability}, {_gib(d['total_memory_bytes'])}"
        tf32 = "TF32 in effect" if d["tf32"] else "no TF32"
        lines.append(f"  {d['device']:<7} {what}")
        lines.append(f"          {d['precision']}, {tf32}: {d['precision_reason']}")
    return lines


def _datasets(data: dict[str, Any]) -> list[str]:
    lines = [f"datasets under {data['data_dir']} ({data['checksums']})"]
    if data.get("note"):
        lines.append(f"  {data['note']}")
    for name, found in data["embedded"].items():
        lines.append(f"  {name:<14} {found['state']} (embedded: {found['path']})")
    for name, found in data["in_memory"].items():
        state = found["state"]
        if state == "partial":
            state += f": missing {', '.join(found['missing'])}"
        lines.append(f"  {name:<14} {state}")
    for name, found in data["streamed"].items():
        state = found["state"]
        if found["train_classes"]:
            state += f" ({found['train_classes']} train class folders)"
        if found.get("note"):
            state += f"; {found['note']}"
        lines.append(f"  {name:<14} {state}")
    return lines


def _runs(runs: list[dict[str, Any]], measured: dict[str, str]) -> list[str]:
    lines = [
        "runs (mnist-5k, 2 modules of width 8, batch 64, 1 epoch; multilap 2 laps of 1)",
        f"  {'run':<44} {'verdict':<7} {'acc':>6} {'floor':>6} {'images/s':>9} "
        f"{'peak':>9} {'precision':<9} {'tf32':<5} {'seconds':>7}",
    ]
    for r in runs:
        verdict = "FAIL" if r.get("error") else "pass"
        lines.append(
            f"  {r['name']:<44} {verdict:<7} {_number(r.get('final_test_acc'), 3):>6} "
            f"{_number(r.get('accuracy_floor'), 3):>6} {_number(r.get('images_per_s')):>9} "
            f"{_mib(r.get('peak_memory_bytes')):>9} {r.get('precision') or '-':<9} "
            f"{str(r.get('tf32', '-')).lower():<5} {_number(r.get('seconds'), 1):>7}"
        )
    lines += [f"  {name}: {how}" for name, how in measured.items()]
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The report for a reader: verdict, skipped parts, failures and warnings first."""
    lines = _header(report)
    lines.append("")
    lines += _versions(report["versions"])
    lines += _devices(report["devices"])
    lines.append(f"PNG export: chromium {report['chromium']['summary']}")
    lines += _datasets(report["datasets"])
    lines += _runs(report["runs"], report["measured"])
    for w in report["warm_ups"]:
        lines.append(f"  warm-up before them (its figures left out): {w['name']}, {w['seconds']} s")
    lines.append("checks")
    lines += [
        f"  {'pass' if c['passed'] else 'FAIL'}  {c['name']}: {c['reason']}"
        for c in report["checks"]
    ]
    return "\n".join(lines)
