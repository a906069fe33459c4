"""Sections that time each fast path of the engine against the variant without it."""

from __future__ import annotations

import statistics
import time
from typing import Any

from workbench.bench.common import median_total, one_line


class FastPathSections:
    """The Bench's fast-path sections (they read its config, trainer and side_by_side)."""

    def fast_paths(self) -> dict[str, Any]:
        """Each fast path against the variant without it, on the same network and data."""
        base = self.config
        out: dict[str, Any] = {}
        last = base.n_modules - 1  # the deepest frozen prefix
        seq = base.replace(method="sequential")
        par = base.replace(method="parallel")
        out["frozen_prefix_no_grad"] = self.compare(
            f"sequential, module {last + 1}",
            {"with grad": (seq, {"prefix_mode": "grad"}), "no_grad": (seq, {})},
            phase=last,
        )
        out["frozen_prefix_inference_mode"] = self.compare(
            f"sequential, module {last + 1}; inference_mode needs a clone before backward",
            {"no_grad": (seq, {}), "inference_mode + clone": (seq, {"prefix_mode": "inference"})},
            phase=last,
        )
        out["resident_data"] = self.compare(
            "parallel",
            {"DataLoader": (par, {"resident": False}), "resident": (par, {"resident": True})},
        )
        out["no_host_sync"] = self.compare(
            "parallel",
            {"sync every step": (par, {"sync_each_step": True}), "sync per epoch": (par, {})},
        )
        default = "on by default" if self.device.type == "cuda" else "off by default on the CPU"
        out["bf16_autocast"] = self.compare(
            f"parallel, and evaluation; {default}",
            {
                "fp32": (par.replace(precision="fp32"), {}),
                "bf16": (par.replace(precision="bf16"), {}),
            },
            evaluation=True,
        )
        out["channels_last"] = self.compare(
            f"parallel, and evaluation; {default}",
            {
                "NCHW": (par, {"memory_format": "contiguous_format"}),
                "NHWC": (par, {"memory_format": "channels_last"}),
            },
            evaluation=True,
        )
        out["pinned_memory"] = {
            "skipped": "always on for the DataLoader path on CUDA (data.Batches); "
            "resident_data's 'before' includes it"
        }
        out["feature_cache"] = self.feature_cache()
        return out

    def compare(
        self,
        what: str,
        variants: dict[str, tuple[Any, dict[str, Any]]],
        phase: int | None = None,
        evaluation: bool = False,
    ) -> dict[str, Any]:
        """Time two variants side by side; speedup = after's speed / before's (after is 2nd).

        With `evaluation`, also a whole evaluation (every module and head, the test set).
        """
        try:
            trainers = {}
            for name, (config, options) in variants.items():
                trainers[name] = t = self.trainer(config)
                t.set_options(**options)
            runs = {
                name: lambda t=t: t.epoch_of_all_modules(None if phase is None else [phase])
                for name, t in trainers.items()
            }
            reps = self.side_by_side(runs)
            if evaluation:
                evals = self.side_by_side({n: t.evaluate_all for n, t in trainers.items()})
        except Exception as e:  # a variant this machine cannot run (bf16 kernels, say)
            return {"what": what, "skipped": one_line(e)}
        (before, b), (after, a) = ((n, median_total(r)) for n, r in reps.items())
        out = {
            "what": what,
            "before": before,
            "after": after,
            "before_images_per_s": self.n / b,
            "after_images_per_s": self.n / a,
            "speedup": b / a,
        }
        if evaluation:
            eb, ea = (median_total(r) for r in evals.values())
            n_test = len(self.data.test_y)
            out |= {
                "eval_before_images_per_s": n_test / eb,
                "eval_after_images_per_s": n_test / ea,
                "eval_speedup": eb / ea,
            }
        return out

    def feature_cache(self) -> dict[str, Any]:
        """Sequential with and without the cached prefix (augmentation off, as it requires)."""
        config = self.config.replace(method="sequential", augment="none")
        plain, cached = self.trainer(config), self.trainer(config.replace(cache_features=True))
        builds: list[float] = []

        def cached_pass() -> list[float]:
            seconds, build = [], 0.0
            for phase in cached.phases:
                t = time.perf_counter()
                cached.begin_phase(phase)
                self.sync()
                build += time.perf_counter() - t
                seconds.append(cached.train_pass(phase, 0)[2])
                cached.end_phase(phase)
            builds.append(build)
            return seconds

        reps = self.side_by_side({"plain": plain.epoch_of_all_modules, "cached": cached_pass})
        b, a = median_total(reps["plain"]), median_total(reps["cached"])
        build = statistics.median(builds)
        return {
            "what": "sequential, every module one epoch; the cache is built once per module",
            "before": "prefix every step",
            "after": "cached prefix",
            "before_images_per_s": self.n / b,
            "after_images_per_s": self.n / a,
            "cache_build_s": build,
            "speedup": b / a,  # per epoch, once the cache is built
            "speedup_one_epoch_with_build": b / (a + build),
        }

    def compile(self) -> dict[str, Any]:
        """torch.compile on every module and head (parallel): compile time, then steady speed."""
        self.torch._dynamo.reset()
        par = self.config.replace(method="parallel")
        try:
            eager, compiled = self.trainer(par), self.trainer(par.replace(compile=True))
            compiled.set_options(compile_evaluation=True)
            t = time.perf_counter()
            compiled.epoch_of_all_modules()  # the first pass compiles (and recompiles)
            first = time.perf_counter() - t
            reps = self.side_by_side(
                {"eager": eager.epoch_of_all_modules, "compiled": compiled.epoch_of_all_modules}
            )
            evals = self.side_by_side(
                {"eager": eager.evaluate_all, "compiled": compiled.evaluate_all}
            )
        except Exception as e:  # no C++ compiler, an unsupported op, ...
            return {"skipped": f"torch.compile failed here: {one_line(e)}"}
        b, a = median_total(reps["eager"]), median_total(reps["compiled"])
        eb, ea = median_total(evals["eager"]), median_total(evals["compiled"])
        n_test = len(self.data.test_y)
        return {
            "what": "parallel, and evaluation; compile_s = first compiled pass - a steady one",
            "compile_s": first - a,
            "before": "eager",
            "after": "compiled",
            "before_images_per_s": self.n / b,
            "after_images_per_s": self.n / a,
            "speedup": b / a,
            "eval_before_images_per_s": n_test / eb,
            "eval_after_images_per_s": n_test / ea,
            "eval_speedup": eb / ea,
        }
