"""DGL's modules truly in parallel: each module trains in its own worker process.

With `pipeline` on (method parallel), module k trains in a process of its own (on a GPU of its
own when there are several) on the detached outputs of module k-1, which reach it through a
bounded queue (torch.multiprocessing, forkserver or spawn; tensors in shared memory): module k
trains on batch t while module k+1 trains on batch t-1. The main process drives the epochs: it feeds
the training batches to module 1, gathers each module's epoch numbers and its state at the
epoch's end, and then evaluates, records and checkpoints as the Trainer does for any run, so
metrics.jsonl, summary.json, the checkpoints and resume are those of any run.

    replay_buffer 0   synchronous: module k+1 trains once on each output of module k, in order,
                      so the numbers are the single-process run's (up to float rounding).
    replay_buffer M   DGL's asynchronous variant (eugenium/DGL, buffer_experiments/
                      cifar_buffer.py): a ring of M batches before each module but the first,
                      sampled with reuse (pipeline_worker.ReplayBuffer), so a slower module
                      does not stall the faster ones.

Staleness: a module trains on activations its producer made at most replay_buffer + QUEUE_DEPTH
of the producer's steps earlier; every worker checks it on every step (pipeline_worker.py).
Stopping (the flag, Ctrl-C, an error anywhere) stops every worker within JOIN_S seconds, then
terminates what is left.
"""

from __future__ import annotations

import contextlib
import math
import queue
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from workbench.config import Config
from workbench.events import StopRequested
from workbench.records import RunFailed
from workbench.summary import Summary
from workbench.training.backends import InProcess, PassTotals
from workbench.training.methods import Phase, learning_rate
from workbench.training.pipeline_worker import (
    POLL_S,
    QUEUE_DEPTH,
    WorkerSpec,
    host_copy,
    staleness_bound,
    worker_main,
)
from workbench.training.stop_signals import STOP_SIGNALS

if TYPE_CHECKING:
    from workbench.training.engine import Trainer

JOIN_S = 10.0  # how long stopped workers get to exit before they are terminated
START_S = 300.0  # how long a worker may take to start (import torch, build its module)


def worker_devices(main: torch.device, n_modules: int, n_gpus: int | None = None) -> list[str]:
    """Module k's device: the k-th of the `n_gpus` GPUs (default: those visible), round robin,
    on CUDA; else the CPU."""
    if main.type == "cuda":
        n = torch.cuda.device_count() if n_gpus is None else n_gpus
        return [f"cuda:{k % n}" for k in range(n_modules)]
    return ["cpu"] * n_modules


def shared_gpus(devices: list[str]) -> str | None:
    """One line saying which modules share a GPU (and so take turns on it), or None."""
    by_device: dict[str, list[int]] = {}
    for k, device in enumerate(devices):
        by_device.setdefault(device, []).append(k + 1)
    shared = {d: ks for d, ks in by_device.items() if d.startswith("cuda") and len(ks) > 1}
    if not shared:
        return None
    where = "; ".join(f"modules {', '.join(map(str, ks))} on {d}" for d, ks in shared.items())
    return (
        f"pipeline: {len(devices)} modules on {len(by_device)} GPU(s), so modules share a GPU "
        f"and take turns on it ({where}): the pipeline runs at most {len(by_device)} modules at "
        "once"
    )


def worker_threads(n_workers: int) -> int:
    """This process's torch threads (the cores, or a sweep point's share) split between the
    workers, at least one each: 2 cores, 2 modules: one thread each."""
    return max(1, torch.get_num_threads() // n_workers)


def start_method() -> Any:
    """torch.multiprocessing's forkserver where there is one, else spawn. Either way a worker
    is a fresh process that inherits none of this one's threads or torch state; forkserver
    forks it from a server that imported torch once, so two workers start in about 0.1-0.4 s
    where spawn's fresh interpreters took 8-20 s (2 busy cores, each importing torch)."""
    import torch.multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "workbench.training.pipeline_worker"])  # if not started
    return ctx


class Pipeline:
    """The worker processes of one run and the queues between them (main-process side)."""

    def __init__(
        self,
        config: Config,
        num_classes: int,
        devices: list[str],
        threads: int,
        normalization: tuple[tuple[float, ...], tuple[float, ...]],
    ):
        self.config, self.n = config, len(devices)
        self.specs = [
            WorkerSpec(config, k, num_classes, d, threads, normalization if k == 0 else None)
            for k, d in enumerate(devices)
        ]
        self.processes: list[Any] = []
        self.fed = 0  # batches put into module 1's inbox, ever
        self.pending: dict[int, dict[str, Any]] = {}  # this epoch's reports, as they come
        self.ready: set[int] = set()  # the workers that have built their modules

    def start(self, stop: Any) -> None:
        """Start one worker per module and wait until each has built its module."""
        ctx = start_method()
        self.stop = ctx.Event()
        self.results = ctx.Queue()
        self.inboxes = [ctx.Queue(QUEUE_DEPTH) for _ in range(self.n)]
        self.controls = [ctx.Queue() for _ in range(self.n)]
        self.produced = [ctx.Value("q", 0, lock=False) for _ in range(self.n)]
        for k, spec in enumerate(self.specs):
            channels = {
                "control": self.controls[k],
                "inbox": self.inboxes[k],
                "outbox": self.inboxes[k + 1] if k + 1 < self.n else None,
                "results": self.results,
                "stop": self.stop,
                "produced_in": self.produced[k],
                "produced_out": self.produced[k + 1] if k + 1 < self.n else None,
            }
            process = ctx.Process(
                target=worker_main, args=(spec, channels), name=f"workbench-module-{k + 1}"
            )
            process.daemon = True  # never outlives the main process
            with _stop_signals_ignored():  # inherited: stopping is the main process's to do
                process.start()
            self.processes.append(process)
        deadline = time.monotonic() + START_S
        self.wait_for(lambda: len(self.ready) == self.n, stop, deadline, "start")

    def send_states(self, states: list[dict[str, Any]]) -> None:
        for control, state in zip(self.controls, states):
            control.put(("state", state))

    def epoch(
        self, batches: Any, phase: Phase, epoch: int, n_batches: int, stop: Any
    ) -> tuple[list[dict[str, Any]], int]:
        """Feed one epoch's batches (uint8 images: module 1 normalizes them) to module 1;
        every module's report, and the images fed."""
        for control in self.controls:
            control.put(("epoch", phase, epoch, n_batches))
        seen = 0
        for x, y in batches:
            if stop.is_set():
                raise StopRequested
            item = (self.fed, x, y, None)  # CUDA: by CUDA IPC; CPU: by shm (module 1 makes images)
            while True:
                try:
                    self.inboxes[0].put(item, timeout=POLL_S)
                    break
                except queue.Full:
                    self.check(stop)
            self.fed += 1
            self.produced[0].value = self.fed
            seen += len(y)
        self.wait_for(lambda: len(self.pending) == self.n, stop)
        reports = [self.pending.pop(k) for k in range(self.n)]
        return reports, seen

    def wait_for(
        self, done: Callable[[], bool], stop: Any, deadline: float = math.inf, what: str = ""
    ) -> None:
        """Take the workers' messages until `done()`, checking on them while none comes."""
        while not done():
            if time.monotonic() > deadline:
                raise RunFailed(f"pipeline: the workers did not {what} within {START_S:.0f} s")
            try:
                self.take(self.results.get(timeout=POLL_S))
            except queue.Empty:
                self.check(stop)

    def take(self, message: tuple[str, int, Any]) -> None:
        """A worker's message: ready, its epoch's report (kept), or its error (raised)."""
        kind, k, payload = message
        if kind == "error":
            raise RunFailed(f"pipeline: module {k + 1}'s worker failed: {payload}")
        if kind == "report":
            self.pending[k] = payload
        elif kind == "ready":
            self.ready.add(k)

    def check(self, stop: Any) -> None:
        """While waiting: honour the stop flag, take early messages, notice a dead worker."""
        if stop.is_set():
            raise StopRequested
        try:
            while True:
                self.take(self.results.get_nowait())
        except queue.Empty:
            pass
        for k, process in enumerate(self.processes):
            if process.exitcode is not None:
                try:  # a worker that failed says why just before it exits
                    self.take(self.results.get(timeout=1.0))
                except queue.Empty:
                    pass
                raise RunFailed(
                    f"pipeline: module {k + 1}'s worker process ended unexpectedly "
                    f"(exit code {process.exitcode})"
                )

    def close(self) -> None:
        """Stop every worker: ask, wait up to JOIN_S seconds, then terminate and kill."""
        if not self.processes:
            return
        self.stop.set()
        for control in self.controls:
            control.put(("stop",))
        deadline = time.monotonic() + JOIN_S
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(2.0)
            if process.is_alive():
                process.kill()
                process.join(2.0)
        for q in [*self.controls, *self.inboxes, self.results]:
            q.cancel_join_thread()  # this process's exit must not wait on a pipe nobody reads
            q.close()
        self.processes = []


class Pipelined(InProcess):
    """A Trainer's driver for a pipelined `parallel` run: the workers train, the Trainer's
    process feeds them, then evaluates, records and checkpoints as for any run."""

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None
        self.summary: Summary | None = None  # the run's summary, while fit runs
        self.staleness_max: list[int] | None = None  # per module, the oldest batch trained on
        # per module, the last epoch's (producer step, age) of each batch it trained on
        self.last_epoch_steps: list[list[tuple[int, int]]] | None = None
        self.worker_peaks: list[int] | None = None  # each worker's peak, from its last report

    @contextlib.contextmanager
    def session(self, trainer: Trainer, summary: Summary) -> Iterator[None]:
        """The workers start at the first epoch and are stopped at the end, on an error, on
        the stop flag and on Ctrl-C alike."""
        summary.pipeline_workers = self.workers(trainer)
        sharing = shared_gpus([w["device"] for w in summary.pipeline_workers])
        if sharing:
            warnings.warn(sharing, RuntimeWarning, stacklevel=2)
        summary.pipeline_staleness_bound = staleness_bound(trainer.config)
        self.summary = summary
        try:
            yield
        finally:
            self.close_pipeline()

    def close_pipeline(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
            self.pipeline = None

    def workers(self, trainer: Trainer) -> list[dict[str, Any]]:
        """Each module's worker: its device and CPU threads."""
        n = len(trainer.model)
        devices, threads = worker_devices(trainer.device, n), worker_threads(n)
        return [{"module": k + 1, "device": d, "threads": threads} for k, d in enumerate(devices)]

    def start_pipeline(self, trainer: Trainer) -> Pipeline:
        """Start the workers and hand them the model's (and optimizers') current state."""
        workers = self.workers(trainer)
        devices = [w["device"] for w in workers]
        data = trainer.data
        normalization = (tuple(data.mean), tuple(data.std))
        threads = workers[0]["threads"]
        pipeline = Pipeline(trainer.config, data.num_classes, devices, threads, normalization)
        self.pipeline = pipeline
        pipeline.start(trainer.stop)
        # with a resumed run's momentum
        pipeline.send_states(
            [host_copy(trainer.learner(str(k)).state()) for k in range(len(devices))]
        )
        return pipeline

    def train_pass(self, trainer: Trainer, phase: Phase, epoch: int) -> PassTotals:
        """One epoch in the workers: ([loss sum, correct] per module, images, seconds, lr)."""
        pipeline = self.pipeline or self.start_pipeline(trainer)
        batches = trainer.train_batches
        n_batches = len(batches)
        start = time.perf_counter()
        uint8 = batches.iterate(normalized=False)
        reports, seen = pipeline.epoch(
            trainer.timed_batches(uint8), phase, epoch, n_batches, trainer.stop
        )
        seconds = time.perf_counter() - start
        for k, report in zip(phase.modules, reports):
            trainer.learner(str(k)).load(report["state"])
        trainer.finite = torch.stack([r["finite"] for r in reports]).to(trainer.device)
        skipped = [r["skipped_steps"] for r in reports]
        trainer.skipped = None if None in skipped else torch.tensor(skipped)
        self.worker_peaks = [r["peak_memory_bytes"] for r in reports]
        self.note_staleness(reports)
        self.last_epoch_steps = [list(zip(r["producer_steps"], r["ages"])) for r in reports]
        if not trainer.estimated:
            trainer.report_estimate(phase, epoch, seen / seconds)
        config = trainer.config
        lr = learning_rate(
            config, phase.first_epoch + epoch + (n_batches - 1) / n_batches, phase.total_epochs
        )
        # with a replay buffer a module may train on more or fewer images than were fed: its
        # sums are scaled to the images fed, so the rows' means are its own
        totals = [
            [r["loss_sum"] * seen / r["seen"], r["correct"] * seen / r["seen"]] for r in reports
        ]
        return totals, seen, seconds, lr

    def peak_memory(self, trainer: Trainer, own: int) -> int:
        """The run's peak: per device, this process's and its workers' peaks added up (on the
        CPU they share the RAM; a GPU holds what every process on it allocated), the largest
        device's. summary.json lists each worker's as pipeline_peak_memory_bytes."""
        on: dict[str, int] = {str(trainer.device): own}
        for worker, peak in zip(self.workers(trainer), self.worker_peaks or []):
            on[worker["device"]] = on.get(worker["device"], 0) + peak
        if self.summary is not None and self.worker_peaks is not None:
            self.summary.pipeline_peak_memory_bytes = self.worker_peaks
        return max(on.values())

    def note_staleness(self, reports: list[dict[str, Any]]) -> None:
        """The largest age (in producer steps) of a batch each module trained on, so far."""
        previous = self.staleness_max or [0] * len(reports)
        self.staleness_max = [max(old, *r["ages"]) for old, r in zip(previous, reports)]
        if self.summary is not None:
            self.summary.pipeline_staleness_max = self.staleness_max


@contextlib.contextmanager
def _stop_signals_ignored() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP ignored while a worker is spawned (it inherits that from
    birth), where this is the main thread; elsewhere (a notebook's training thread) the worker
    ignores them itself. A signal sent to the whole process group (systemd, a terminal) then
    reaches the main process alone, which stops the workers (close) at the next step."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
