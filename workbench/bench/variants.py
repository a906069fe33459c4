"""The engine with its fast paths switchable."""

from __future__ import annotations


def variant_class() -> type:
    from workbench.data import Batches
    from workbench.training.engine import Trainer

    class Variant(Trainer):
        """A Trainer whose fast paths can be switched off (only here: runs always use them)."""

        prefix_mode = "no_grad"  # "grad": autograd records the prefix; "inference": see below
        sync_each_step = False  # read the metrics on the host after every step

        def set_options(
            self,
            prefix_mode: str = "no_grad",
            sync_each_step: bool = False,
            resident=None,
            memory_format: str | None = None,
            compile_evaluation: bool = False,
            checkpoint: int = 0,
        ) -> None:
            import torch

            self.prefix_mode, self.sync_each_step = prefix_mode, sync_each_step
            if checkpoint:  # recomputed in backward, in `checkpoint` segments (memory section)
                from workbench.bench.memory import checkpointed

                self.trained = [checkpointed(m, checkpoint) for m in self.trained]
            if memory_format is not None:  # NHWC or NCHW whatever the device's default
                self.memory_format = getattr(torch, memory_format)
                self.model.to(memory_format=self.memory_format)
            self.eval_model = self.model
            if compile_evaluation:  # a copy whose modules and heads run compiled
                import copy

                self.eval_model = copy.deepcopy(self.model)
                for part in (*self.eval_model.trunk, *self.eval_model.heads):
                    part.compile()
            if resident is not None:
                b = self.train_batches
                self.train_batches = Batches(
                    self.data.train_x,
                    self.data.train_y,
                    batch_size=b.batch_size,
                    device=self.device,
                    mean=self.data.mean,
                    std=self.data.std,
                    augment=b.augment,
                    shuffle=b.shuffle,
                    seed=b.seed,
                    resident=resident,
                )

        def prefix_features(self, phase, x):
            if self.prefix_mode == "grad":
                with self.autocast():
                    for k in range(phase.frozen_prefix):
                        x = self.frozen[k](x)
                return x.detach()
            if self.prefix_mode == "inference":
                import torch

                with torch.inference_mode():
                    x = super().prefix_features(phase, x)
                return x.clone()  # an inference tensor cannot be saved for backward
            return super().prefix_features(phase, x)

        def step(self, phase, x, y, stats):
            super().step(phase, x, y, stats)
            if self.sync_each_step:
                stats.tolist()

        def evaluate_all(self) -> list[float]:
            """Seconds of one evaluation of every module and head on the test set."""
            import time

            from workbench.metrics import evaluate

            start = time.perf_counter()
            batches = (
                (x.contiguous(memory_format=self.memory_format), y) for x, y in self.test_batches
            )
            evaluate(getattr(self, "eval_model", self.model), batches, autocast=self.amp)
            self.synchronize()
            return [time.perf_counter() - start]

        def epoch_of_all_modules(self, only: list[int] | None = None) -> list[float]:
            """Seconds of one epoch of each phase's (or only some) training steps."""
            phases = self.phases if only is None else [self.phases[i] for i in only]
            return [self.train_pass(phase, 0)[2] for phase in phases]

    return Variant
