"""The pipeline section: DGL's modules in worker processes against one process.

`parallel` with `pipeline` on trains each module in its own process (training/pipeline.py). On
a CPU the cores are split between the workers (2 modules on 2 cores: 1 thread each) and set
against one process that steps both modules with every core (2 threads); with N GPUs, N modules
each on its own GPU against one process on one GPU. One epoch of each, alternating, repetition
by repetition; the workers start once (their start-up is reported on its own).
"""

from __future__ import annotations

import os
import time
from typing import Any

from workbench.bench.common import median_total


class PipelineSections:
    """The Bench's pipeline section (it reads its config, device, data and side_by_side)."""

    def pipeline(self) -> dict[str, Any]:
        """Pipelined `parallel` against the single-process one: a ratio of images/s."""
        return {
            "what": "one epoch of method parallel; pipeline: one worker process per module, "
            "fed batches by the main process, synchronous (replay_buffer 0); images/s, median "
            "over the repeats after a warm-up, the two run alternately",
            "cpu": self.pipeline_cpu(),
            "gpus": self.pipeline_gpus(),
        }

    def pipeline_cpu(self) -> dict[str, Any]:
        """2 modules: 2 workers with cores/2 threads each against 1 process with every core."""
        if self.device.type != "cpu":
            return {"skipped": f"the bench runs on {self.device.type}"}
        cores = os.cpu_count() or 1
        config = self.config.replace(method="parallel", n_modules=2)
        result = self.pipeline_against_one_process(config, threads=cores)
        return {"n_modules": 2, "one_process_threads": cores, **result}

    def pipeline_gpus(self) -> dict[str, Any]:
        """N modules on N GPUs (one each) against one process on one GPU."""
        torch = self.torch
        if self.device.type != "cuda":
            return {"skipped": "no GPU"}
        n = torch.cuda.device_count()
        if n < 2:
            return {"skipped": "one GPU: the pipeline gives each module a GPU of its own"}
        if self.deepest(n) != n:
            return {"skipped": f"{self.config.arch} has fewer than {n} blocks"}
        config = self.config.replace(method="parallel", n_modules=n)
        result = self.pipeline_against_one_process(config, threads=torch.get_num_threads())
        return {"n_modules": n, "gpus": n, "device_names": self.gpu_names(n), **result}

    def gpu_names(self, n: int) -> list[str]:
        return [self.torch.cuda.get_device_name(i) for i in range(n)]

    def pipeline_against_one_process(self, config: Any, threads: int) -> dict[str, Any]:
        """Time one epoch of each, alternately: images/s and the ratio pipeline / one process
        (on a CPU also against one process with a single thread: on a busy CPU, OpenMP
        threads that wait for each other can cost more than the second thread brings)."""
        torch = self.torch
        from workbench.models import build_model
        from workbench.records import RunDir
        from workbench.training import Trainer
        from workbench.training.pipeline import Pipelined

        one = self.trainer(config)
        piped_config = config.replace(pipeline=True)
        model = build_model(piped_config).to(self.device)
        driver = Pipelined()
        piped = Trainer(
            piped_config, RunDir(self.tmp, piped_config), model, self.data, self.device,
            driver=driver,
        )  # fmt: skip
        phase = one.phases[0]
        caller_threads = torch.get_num_threads()

        def timed(trainer: Any, n_threads: int) -> list[float]:
            torch.set_num_threads(n_threads)
            try:
                return [trainer.train_pass(phase, 0)[2]]
            finally:
                torch.set_num_threads(caller_threads)

        variants = {"one_process": lambda: timed(one, threads)}
        if self.device.type == "cpu" and threads > 1:
            variants["one_thread"] = lambda: timed(one, 1)
        variants["pipeline"] = lambda: timed(piped, 1)  # this process only feeds batches
        try:
            start = time.perf_counter()
            torch.set_num_threads(threads)  # the workers split these between them
            try:
                worker_threads = driver.workers(piped)[0]["threads"]
                driver.start_pipeline(piped)
            finally:
                torch.set_num_threads(caller_threads)
            startup = time.perf_counter() - start
            reps = self.side_by_side(variants)
        finally:
            driver.close_pipeline()
        speed = {name: self.n / median_total(runs) for name, runs in reps.items()}
        out = {
            "workers": config.n_modules,
            "worker_threads": worker_threads,
            "images": self.n,
            "one_process_images_per_s": speed["one_process"],
            "pipeline_images_per_s": speed["pipeline"],
            "ratio": speed["pipeline"] / speed["one_process"],
            "seconds": {name: [r[0] for r in runs] for name, runs in reps.items()},
            "worker_startup_s": startup,
        }
        if "one_thread" in speed:
            out["one_thread_images_per_s"] = speed["one_thread"]
            out["ratio_to_one_thread"] = speed["pipeline"] / speed["one_thread"]
        return out


def pipeline_markdown(section: dict[str, Any]) -> list[str]:
    """bench.md's lines for the pipeline section."""
    rows = []
    for where in ("cpu", "gpus"):
        r = section.get(where, {})
        if "skipped" in r or not r:
            rows.append(f"| {where} | skipped: {r.get('skipped', 'not run')} | | | |")
            continue
        if where == "cpu":
            setup = (
                f"{r['workers']} workers x {r['worker_threads']} thread(s) vs 1 process x "
                f"{r['one_process_threads']} threads"
            )
        else:
            setup = f"{r['workers']} workers on {r['gpus']} GPUs vs 1 process on 1 GPU"
        rows.append(
            f"| {where} | {setup} | {r['one_process_images_per_s']:.0f} | "
            f"{r['pipeline_images_per_s']:.0f} | {r['ratio']:.3g}x |"
        )
        if "one_thread_images_per_s" in r:
            rows.append(
                f"| {where} | {r['workers']} workers x {r['worker_threads']} thread(s) vs 1 "
                f"process x 1 thread | {r['one_thread_images_per_s']:.0f} | "
                f"{r['pipeline_images_per_s']:.0f} | {r['ratio_to_one_thread']:.3g}x |"
            )
    return [
        "## Pipeline (parallel's modules in worker processes)",
        "\n".join(
            [
                "| where | setup | one process images/s | pipeline images/s | ratio |",
                "|---|---|---|---|---|",
                *rows,
            ]
        ),
        f"{section['what']}.",
    ]
