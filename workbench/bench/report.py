"""bench.json as markdown tables (bench.md)."""

from __future__ import annotations

from typing import Any

from workbench.bench.common import METHODS
from workbench.bench.ddp import ddp_markdown
from workbench.bench.memory import memory_markdown
from workbench.bench.pipeline import pipeline_markdown


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def loader_markdown(lo: dict[str, Any]) -> list[str]:
    """The loader section: each decoder's images/s against the net's, and the verdict."""
    fastest = lo["net"]["fastest_pass_images_per_s"]
    rows = []
    for name, d in lo["decoders"].items():
        if "skipped" in d:
            rows.append([name, "", f"skipped: {d['skipped']}", ""])
        else:
            rows.append([name, d["workers"], d["images_per_s"], d["images_per_s"] / fastest])
    net = lo["net"]
    passes = ", ".join(f"{v:,.0f}" for v in net["per_pass_images_per_s"])
    rows.append([f"net: {net['method']}, fastest pass", "", fastest, 1.0])
    return [
        f"## Loader against the net ({lo['images_per_epoch']} images of {lo['image_size']}x"
        f"{lo['image_size']}, batch {lo['batch_size']})",
        _table(["reading", "workers", "images/s", "/ net"], rows),
        f"Verdict: {lo['verdict']}. Net images/s per pass: {passes} ({net['what']}). "
        f"Loader: {lo['what']}.",
    ]


def to_markdown(r: dict[str, Any]) -> str:
    """bench.json's figures as markdown tables."""
    c = r["config"]
    parts = [
        "# workbench bench" + (" (quick)" if r["quick"] else ""),
        f"{r['created']} · {r['device']} ({r['device_name']}) · torch {r['torch']} · "
        f"{r['cpu_threads']} CPU threads · load average {r['load_average_start'][0]:.1f} at "
        f"start, {r['load_average_end'][0]:.1f} at end · {r['repeats']} repeats after a warm-up "
        f"· medians · {r['wall_time_s']:.0f} s in all",
        f"Network: {c['arch']}, width {c['width'] or 'default'}, {c['n_modules']} modules, "
        f"aux depth {c['aux_depth']}, batch {c['batch_size']}; data: {c['dataset']}, "
        f"{r['data']['n_train']} training images. Forward: "
        f"{r['flops']['forward_per_image'] / 1e6:.2f} MFLOP per image (trunk and every head).",
    ]
    m = r["methods"]
    if "skipped" not in m:
        rows = []
        for name in METHODS:
            e = m[name]
            row = [name, e["epoch_all_modules_s"], e["images_per_s"], e["speed_vs_end_to_end"]]
            row.append(e["train_tflops_per_s"])
            if "fraction_of_peak" in e:
                row.append(f"{100 * e['fraction_of_peak']:.1f}%")
            rows.append(row)
        heads = ["method", "s per epoch of all modules", "images/s", "speed vs end-to-end"]
        heads.append("train TFLOP/s")
        if r["peak_tflops"]:
            heads.append(f"of {r['peak_tflops']} peak")
        parts += ["## Methods", _table(heads, rows)]
        per_module = [
            [k + 1, *(m[name]["per_module_images_per_s"][k] for name in METHODS)]
            for k in range(m["n_modules"])
        ]
        parts += [
            "Images/s while module k trains (sequential: its own pass, frozen prefix included; "
            "parallel and end-to-end: one pass trains every module):",
            _table(["module", *METHODS], per_module),
        ]
    mem = r["memory"]
    if "rows" in mem:
        parts += memory_markdown(mem)
    d = r["depth"]
    if "skipped" not in d:
        rows = [
            [
                row["n_modules"],
                *(
                    (row["sequential_s"], row["parallel_s"], row["sequential_to_parallel"],
                     row["sequential_growth"], row["parallel_growth"])
                    if "skipped" not in row
                    else (row["skipped"], "", "", "", "")
                ),
            ]
            for row in d["rows"]
        ]  # fmt: skip
        heads = ["modules", "sequential s", "parallel s", "seq / par", "seq growth", "par growth"]
        parts += ["## Cost against depth (s per epoch of all modules)", _table(heads, rows)]
    w = r.get("whole_runs", {"skipped": "not measured"})
    if "skipped" not in w:
        parts_ = w["parts"]
        rows = [
            [m, w[m]["total"], *(f"{w[m][k]:.3g} ({100 * w[m]['share'][k]:.0f}%)" for k in parts_)]
            for m in METHODS
        ]
        parts += [
            "## Whole runs (s, and share of the run)",
            _table(["method", "total s", *parts_], rows),
            f"{w['what']}.",
        ]
    cb = r["callbacks"]
    if "skipped" in cb:
        parts += ["## Live plots", f"Skipped: {cb['skipped']}"]
    else:
        parts += [
            "## Live plots",
            _table(
                ["without s", "with s", "with / without", "inside the callback s"],
                [[cb["without_s"], cb["with_s"], cb["ratio"], cb["inside_callback_s"]]],
            ),
            f"{cb['callback']}; {cb['run']}.",
        ]
    fast = r["fast_paths"] if "skipped" not in r["fast_paths"] else {}
    fast = {**fast, "compile": r["compile"]}
    rows = []
    for name, f in fast.items():
        if "skipped" in f:
            rows.append([name, f.get("what", ""), "", "", "", f"skipped: {f['skipped']}"])
            continue
        note = ""
        if "cache_build_s" in f:
            note = (
                f"cache built in {f['cache_build_s']:.3g} s; with it, one epoch: "
                f"{f['speedup_one_epoch_with_build']:.3g}x"
            )
        if "compile_s" in f:
            note = f"compile time {f['compile_s']:.3g} s"
        if "eval_speedup" in f:
            note += "; " if note else ""
            note += (
                f"evaluation {f['eval_before_images_per_s']:.0f} -> "
                f"{f['eval_after_images_per_s']:.0f} images/s: {f['eval_speedup']:.3g}x"
            )
        rows.append(
            [
                name,
                f["what"],
                f"{f['before']}: {f['before_images_per_s']:.0f}",
                f"{f['after']}: {f['after_images_per_s']:.0f}",
                f"{f['speedup']:.3g}x",
                note,
            ]
        )
    parts += [
        "## Fast paths (images/s, before and after)",
        _table(["fast path", "measured on", "before", "after", "speedup", "note"], rows),
    ]
    if "skipped" not in r.get("pipeline", {"skipped": ""}):
        parts += pipeline_markdown(r["pipeline"])
    if "skipped" not in r.get("ddp", {"skipped": ""}):
        parts += ddp_markdown(r["ddp"])
    loader = r.get("loader", {"skipped": "not measured"})
    if "skipped" in loader:
        parts += ["## Loader", f"Skipped: {loader['skipped']}"]
    else:
        parts += loader_markdown(loader)
    return "\n\n".join(parts) + "\n"
