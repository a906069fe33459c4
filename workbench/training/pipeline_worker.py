"""The worker side of the pipeline (pipeline.py): one process trains one module and its head.

A worker takes (producer step, activations, labels, images) from its inbox (images: None
unless the objective reads them), trains its module's LocalLearner on its own local loss, and
puts its detached output, with its own step index, into the next module's inbox. With a
replay buffer (config.replay_buffer = M > 0) a drain thread moves everything that arrives
into a ring of the last M batches, and each step trains on one sampled from it as DGL does, so
the worker never waits for a slower module before it once the ring holds a batch.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from workbench.config import Config
from workbench.data.batches import normalization_tensors, normalize
from workbench.local.learner import LocalLearner, training_body
from workbench.local.objective import LocalInputs
from workbench.local.objectives import objective_class
from workbench.memory import peak_memory_bytes, reset_peak_memory
from workbench.training.device import (
    applied,
    backend_settings,
    compiler,
    memory_format,
    run_precision,
)
from workbench.training.memory_estimate import is_out_of_memory, out_of_memory_message
from workbench.training.methods import Phase, learning_rate, restarts_momentum
from workbench.training.stop_signals import STOP_SIGNALS

QUEUE_DEPTH = 2  # batches in flight between two modules (each inbox's bound)
POLL_S = 0.1  # how often a waiting process looks at the stop flag and its parent


class Stopped(Exception):
    """The stop flag was set, or the main process is gone: the worker returns quietly."""


def staleness_bound(config: Config) -> int:
    """The most producer steps a batch may be old when a module trains on it: the ring's M
    batches (0 without one) plus the QUEUE_DEPTH batches the inbox can hold behind it."""
    return config.replay_buffer + QUEUE_DEPTH


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to build its module (it is pickled into the process)."""

    config: Config
    module: int  # 0-indexed
    num_classes: int
    device: str
    threads: int
    # the first module's: the training set's per-channel (mean, std), for the uint8 images the
    # main process sends (a quarter of the bytes of normalized floats); None for the others
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None


def worker_learner(
    config: Config, k: int, trunk: nn.Module, head: nn.Module, device: str
) -> LocalLearner:
    """Module k's learner in a worker: its module and head on the worker's device, in the
    trunk's memory format (the head too, as the main process's model.to(memory_format))."""
    where = torch.device(device)
    layout = memory_format(config, where)
    trunk = trunk.to(where, memory_format=layout)
    head = head.to(where, memory_format=layout)
    wrap = compiler(config)
    return LocalLearner(
        config,
        [k],
        [trunk],
        [head],
        run_precision(config, where),
        where,
        layout,
        bodies=[wrap(training_body(config, trunk))],
        classifiers=[wrap(head)],
    )


def host_copy(value: Any) -> Any:
    """Tensors (in nested dicts and lists) copied to the host: nothing sent aliases live
    parameters, and nothing sent is a CUDA tensor (CUDA IPC would oblige the sender to keep
    each one alive until the receiver is done with it)."""
    if isinstance(value, Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: host_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(host_copy(v) for v in value)
    return value


class ReplayBuffer:
    """DGL's buffer between two modules, as eugenium/DGL buffer_experiments/cifar_buffer.py's
    `Buffer` (sample_method 'priority_lifo', max_reuse unlimited): a ring of the last `size`
    batches, the newest overwriting the oldest; `sample` returns, among the batches used the
    fewest times, the most recently added, and counts the use. (The reference's index trick
    can pick the slot about to be overwritten, the oldest; its comment says "use the
    freshest one among them", which is what this does.) Thread-safe: a drain thread adds."""

    def __init__(self, size: int):
        self.size = size
        self.slots: list[Any] = []
        self.uses: list[int] = []
        self.added = 0  # batches ever added; slot i holds addition number i (mod size)
        self.cond = threading.Condition()
        self.error: BaseException | None = None

    def add(self, item: Any) -> None:
        with self.cond:
            if len(self.slots) < self.size:
                self.slots.append(item)
                self.uses.append(0)
            else:
                self.slots[self.added % self.size] = item
                self.uses[self.added % self.size] = 0
            self.added += 1
            self.cond.notify_all()

    def sample(self, timeout: float, observe: Callable[[Any], Any] = lambda item: None) -> Any:
        """A batch (None if the ring stayed empty for `timeout` s) and `observe(batch)`, called
        while no batch can arrive, so it sees the ring as the batch was chosen from."""
        with self.cond:
            if not self.slots and not self.cond.wait_for(
                lambda: bool(self.slots) or self.error is not None, timeout
            ):
                return None, None
            if self.error is not None:
                raise RuntimeError("the replay buffer's drain thread failed") from self.error
            fewest = min(self.uses)
            newest_first = [(self.added - 1 - age) % self.size for age in range(len(self.slots))]
            chosen = next(i for i in newest_first if self.uses[i] == fewest)
            self.uses[chosen] += 1
            item = self.slots[chosen]
            return item, observe(item)


class Inbox:
    """Where a worker's batches come from: its queue in order (the first module, or no replay
    buffer), or a ReplayBuffer that a drain thread fills from the queue.

    `take` returns (producer step, x, y, age): age is how many batches the producer has put out
    after this one, read from its shared counter when the batch is taken.
    """

    def __init__(self, source: Any, produced: Any, replay: int, stop: Any):
        self.source, self.produced, self.stop = source, produced, stop
        self.ring = ReplayBuffer(replay) if replay > 0 else None
        if self.ring is not None:
            threading.Thread(target=self._drain, daemon=True, name="replay-drain").start()

    def age(self, item: tuple) -> int:
        return max(0, self.produced.value - 1 - item[0])

    def take(self) -> tuple[int, Tensor, Tensor, int]:
        while True:
            if self.ring is not None:
                item, age = self.ring.sample(POLL_S, self.age)
            else:
                try:
                    item = self.source.get(timeout=POLL_S)
                except queue.Empty:
                    item = None
                age = self.age(item) if item is not None else None
            if item is not None:
                return (*item, age)
            check_alive(self.stop)

    def _drain(self) -> None:
        assert self.ring is not None
        try:
            while not self.stop.is_set():
                try:
                    self.ring.add(self.source.get(timeout=POLL_S))
                except queue.Empty:
                    continue
        except BaseException as e:  # the consumer raises it from sample
            with self.ring.cond:
                self.ring.error = e
                self.ring.cond.notify_all()


def check_alive(stop: Any) -> None:
    """Raise Stopped when the stop flag is set or the process that started this one is gone."""
    parent = multiprocessing.parent_process()
    if stop.is_set() or (parent is not None and not parent.is_alive()):
        raise Stopped


def put(q: Any, item: Any, stop: Any) -> None:
    """Put into a bounded queue, looking at the stop flag while it is full."""
    while True:
        try:
            q.put(item, timeout=POLL_S)
            return
        except queue.Full:
            check_alive(stop)


def worker_main(spec: WorkerSpec, channels: dict[str, Any]) -> None:
    """A worker process: build module k, then train an epoch per message until told to stop.

    channels: control (main -> this worker), inbox/outbox (None for the last module), results
    (-> main), stop (an Event), produced_in/produced_out (the producers' shared counters).
    """
    for s in STOP_SIGNALS:  # stopping is the main process's to do: it tells the workers
        signal.signal(s, signal.SIG_IGN)
    k, results, stop = spec.module, channels["results"], channels["stop"]
    at_epoch = 0  # the epoch under way, for an error's message
    try:
        torch.set_num_threads(spec.threads)
        device = torch.device(spec.device)
        if device.type == "cuda":  # this worker's GPU is its current device, for every call
            torch.cuda.set_device(device)
        reset_peak_memory(device)
        from workbench.models import build_model

        model = build_model(spec.config, spec.num_classes)
        module = worker_learner(spec.config, k, model.trunk[k], model.heads[k], spec.device)
        del model  # the other modules
        # module 1's inputs are uint8 images, normalized here (a quarter of the bytes)
        norm = spec.normalization
        scale = None if norm is None else normalization_tensors(*norm, device)
        inbox = Inbox(channels["inbox"], channels["produced_in"], _replay(spec, k), stop)
        results.put(("ready", k, None))
        with applied(backend_settings(device, spec.config.tf32)):
            while True:
                message = _wait(channels["control"], stop)
                if message[0] == "stop":
                    return
                if message[0] == "state":
                    module.load(message[1])
                    continue
                phase, epoch, n_batches = message[1:]
                at_epoch = phase.first_epoch + epoch + 1
                report = _epoch(spec, module, inbox, channels, phase, epoch, n_batches, scale)
                results.put(("report", k, report))
    except Stopped:
        return
    except BaseException as e:
        text = traceback.format_exc()
        print(f"workbench pipeline: module {k + 1}'s worker failed:\n{text}", file=sys.stderr)
        line = text.strip().splitlines()[-1]
        if is_out_of_memory(e):  # the same line as a run in one process gives
            line = out_of_memory_message(e, (k,), at_epoch, torch.device(spec.device), None)
        results.put(("error", k, line))
    finally:
        if channels["outbox"] is not None:
            channels["outbox"].cancel_join_thread()  # nobody may read it any more


def _replay(spec: WorkerSpec, k: int) -> int:
    """The ring's size before module k: none before the first (it reads fresh data, as DGL's)."""
    return spec.config.replay_buffer if k > 0 else 0


def _wait(q: Any, stop: Any) -> Any:
    while True:
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            check_alive(stop)


def _epoch(
    spec: WorkerSpec,
    module: LocalLearner,
    inbox: Inbox,
    channels: dict[str, Any],
    phase: Phase,
    epoch: int,
    n_batches: int,
    scale: tuple[Tensor, Tensor] | None,
) -> dict[str, Any]:
    """n_batches steps of the module; its epoch numbers and its state at the end. `scale`:
    module 1's normalization of the uint8 images it is fed."""
    config, stop, outbox = spec.config, channels["stop"], channels["outbox"]
    bound = staleness_bound(config)
    needs_image = "image" in objective_class(config.objective).needs
    if restarts_momentum(config, phase.first_epoch + epoch):
        module.restart_momentum()
    module.train()
    device = module.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    skipped_steps = torch.zeros((), dtype=torch.long, device=device)
    finite = torch.ones(n_batches, dtype=torch.bool, device=device)
    seen, ages, steps = 0, [], []
    for i in range(n_batches):
        check_alive(stop)
        step, x, y, image, age = inbox.take()
        if age > bound:  # the pipeline's promise: never train on older activations than this
            raise RuntimeError(f"module {spec.module + 1} got a batch {age} steps old (> {bound})")
        lr = learning_rate(config, phase.first_epoch + epoch + i / n_batches, phase.total_epochs)
        x = x.to(device, non_blocking=True)
        if scale is not None:  # module 1: uint8 images, normalized here
            image = x.float().div_(255) if needs_image else None
            x = normalize(x, *scale)
        elif image is not None:
            image = image.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        result = module.step(LocalInputs(x, y, image), lr)
        if outbox is not None:
            produced = channels["produced_out"]
            # as it is: a CUDA tensor crosses by CUDA IPC (the next worker copies it to its own
            # GPU, peer to peer, after waiting for the kernels that wrote it), never through
            # pageable host memory; a CPU tensor through shared memory
            put(outbox, (produced.value, result.output, y, image), stop)
            produced.value += 1  # after the put: the counter never runs ahead of the queue
        loss_sum += result.reported[0].detach() * len(y)
        correct += result.correct[0]
        if result.skipped is not None:
            skipped_steps += result.skipped
        finite[i] = torch.isfinite(result.loss[0].detach())
        seen += len(y)
        ages.append(age)
        steps.append(step)
    return {
        "loss_sum": float(loss_sum),
        "correct": int(correct),
        "seen": seen,
        "finite": finite.cpu(),
        "skipped_steps": int(skipped_steps) if module.scaler is not None else None,
        "ages": ages,
        "producer_steps": steps,
        "state": host_copy(module.state()),
        "peak_memory_bytes": peak_memory_bytes(device),
    }
