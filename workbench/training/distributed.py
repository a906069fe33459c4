"""One run across processes or machines: torchrun's processes train one model data-parallel.

    torchrun --nproc-per-node 2 -m workbench run --method parallel ...

Under torchrun (its environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) every
process joins one process group, NCCL on GPUs (rank r on cuda:LOCAL_RANK) and gloo on the CPU,
and trains the same model from the same seed:

- data: each rank draws every global batch of `batch_size` exactly as a single process would
  (same order, same augmentation) and trains on its own slice of it (tensor_split by rank),
  so an epoch has a single process's steps; a streamed dataset's workers read only the rank's
  slice of each batch's files.
- each trained module and its head are wrapped in DistributedDataParallel; the ranks'
  gradients are summed weighted by their slices' sizes, which is the global batch's mean
  gradient. The frozen prefix is not wrapped: it has no gradients to exchange. BatchNorm
  normalizes with each rank's own slice, as DDP does without SyncBatchNorm.
- rank 0 writes the run folder; the other ranks' RunDir writes nothing, and they print no
  progress. summary.json records `world_size` (1 for a plain run). Training losses and
  accuracies are summed over the ranks; evaluation runs on every rank over the whole test
  set with the same weights (so no rank waits on another), and rank 0 records it.
- stop: every STOP_CHECK_STEPS steps the ranks all-reduce their stop flags, so a stop on any
  rank (the time estimate's gate, a SIGINT, SIGTERM or SIGHUP, which torchrun forwards to
  every rank)
  ends them all at the same step, status 'stopped'.
- resume: rank 0 loads the checkpoint and broadcasts the state it restored to the others, so
  their machines need not see the run folder.

A plain `workbench run` (no torchrun environment) never touches torch.distributed.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from workbench.config import Config, ConfigError
from workbench.events import Callback
from workbench.records import RunDir, RunFolderError
from workbench.training.backends import Alone
from workbench.training.checkpoints import ResumePoint

if TYPE_CHECKING:
    from workbench.training.engine import Trainer

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # torchrun sets them for each process
# DDP's flag for syncing buffers before each forward: newer torch renamed broadcast_buffers
_DDP_FLAGS = inspect.signature(DistributedDataParallel.__init__).parameters
BUFFER_SYNC = next(f for f in ("forward_sync_buffers", "broadcast_buffers") if f in _DDP_FLAGS)


@dataclass
class Ranks:
    """This process's place among torchrun's processes, and the groups they talk through."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str  # nccl or gloo: the gradients' group
    host_group: Any  # a gloo group for host-side numbers: stop flags, epoch totals, state

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (picklable; tensors in it on the CPU)."""
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.host_group)
        return box[0]

    def sum(self, values: Sequence[float]) -> list[float]:
        """The element-wise sum of `values` over the ranks."""
        total = torch.tensor(list(values), dtype=torch.float64)
        dist.all_reduce(total, group=self.host_group)
        return total.tolist()


_SESSION: Ranks | None = None  # set while run_experiment runs under torchrun


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (or another launcher with its variables)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def is_follower() -> bool:
    """A torchrun process other than rank 0: it writes and prints nothing of the run."""
    return under_torchrun() and int(os.environ["RANK"]) != 0


def world_size() -> int:
    """The processes training the current run: torchrun's WORLD_SIZE, 1 for a plain run."""
    return _SESSION.world_size if _SESSION is not None else 1


@contextlib.contextmanager
def join(device: torch.device) -> Iterator[Ranks | None]:
    """Join torchrun's process group for one run; yields None (and does nothing) without it.

    The group is left at the end unless it was there before (a script that made its own).
    A stop signal sets the run's stop flag (run_experiment's stop_on_signals), which RankStop
    shares, so the ranks stop together between steps instead of inside a collective.
    """
    global _SESSION
    if not under_torchrun():
        yield None
        return
    owned = not dist.is_initialized()
    ranks = _init(device)
    _SESSION = ranks
    try:
        yield ranks
    finally:
        _SESSION = None
        if owned:
            dist.destroy_process_group()


def _init(device: torch.device) -> Ranks:
    rank, world, local = (int(os.environ[name]) for name in TORCHRUN_VARIABLES)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local >= count:
            raise ConfigError(
                f"device: got cuda for local rank {local}, but {count} GPU(s) are visible on "
                f"this machine; allowed: torchrun --nproc-per-node {count} or fewer, or "
                "--device cpu"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    host = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
    return Ranks(rank, world, local, device, backend, host)


STOP_CHECK_STEPS = 8  # the ranks agree on stopping every this many steps, not at every one


class RankStop:
    """The ranks' shared stop flag: `is_set` is true on every rank once any rank's own flag is
    set (by a signal, say). Every rank calls it at the same steps; every STOP_CHECK_STEPS-th
    call (the first included) is a collective over the host group, and the calls between
    return False without one, so a stop takes at most that many steps to reach every rank."""

    def __init__(self, local: threading.Event, ranks: Ranks, every: int = STOP_CHECK_STEPS):
        self.local, self.ranks, self.every = local, ranks, every
        self.calls = 0
        self.agreed = False  # the ranks agreed to stop (every rank learns it at the same call)

    def set(self) -> None:
        self.local.set()

    def is_set(self) -> bool:
        self.calls += 1
        if self.agreed or (self.calls - 1) % self.every:
            return self.agreed
        flag = torch.tensor([int(self.local.is_set())], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.ranks.host_group)
        self.agreed = bool(flag.item())
        return self.agreed


# -- the run folder ------------------------------------------------------------------------------
class FollowerRun(RunDir):
    """Rank 0's run folder as another rank holds it: rank 0's config and folder path, no lock,
    writes that do nothing, and rank 0's reading of the summary (its machine may not see it)."""

    def __init__(self, path: Path, config: Config, summary: dict[str, Any] | None):
        super().__init__(path, config)
        self.summary = summary

    def read_summary(self) -> dict[str, Any] | None:
        return self.summary

    def read_metrics(self) -> list[dict[str, Any]]:
        return []

    def _write(self, path: Path, data: Any) -> None:
        return None  # rank 0 writes the folder


@contextlib.contextmanager
def open_run(config: Config, ranks: Ranks | None) -> Iterator[RunDir]:
    """The run folder: RunDir.open in a plain run and on rank 0, which tells the other ranks
    its config (with the folder it chose) or the error that refused it."""
    if ranks is None or ranks.rank == 0:
        try:
            run = RunDir.open(config)
        except ConfigError as e:
            if ranks is not None:
                ranks.broadcast({"error": str(e)})
            raise
        if ranks is not None:
            ranks.broadcast({"config": run.config.to_dict(), "summary": run.read_summary()})
        with run:
            yield run
        return
    told = ranks.broadcast(None)
    if "error" in told:
        raise RunFolderError(told["error"])
    shared = Config.from_dict(told["config"])
    yield FollowerRun(Path(shared.out), shared, told["summary"])


def sync_strategy() -> Alone:
    """What the run's processes share: under torchrun its ranks (DataParallel), else nothing."""
    return DataParallel(_SESSION) if _SESSION is not None else Alone()


def watchers(callbacks: Sequence[Callback]) -> Sequence[Callback]:
    """The run's callbacks on this process: none on torchrun's ranks other than 0."""
    return callbacks if _SESSION is None or _SESSION.rank == 0 else ()


# -- training ------------------------------------------------------------------------------------
class SliceShare:
    """This rank's slice of the current global batch, as a fraction of it: the weight its
    (slice-mean) gradients carry into the sum over ranks."""

    value = 0.0


def weighted_sum_hook(share, bucket):  # type: ignore[no-untyped-def]
    """DDP's all-reduce with each rank's gradients weighted by its share of the batch: the sum
    is the global batch's mean gradient even when the slices differ in size (DDP's own mean
    weighs every rank alike). A SliceShare and a dist.GradBucket in, a Future of the bucket
    out; unannotated, since DDP compares annotations with the types and these would be text."""
    grads = bucket.buffer()
    grads.mul_(share.value)
    return dist.all_reduce(grads, async_op=True).get_future().then(lambda f: f.value()[0])


class DataParallel(Alone):
    """torchrun's ranks as a Trainer's sync strategy: DDP-wrapped trained modules and heads,
    each rank's slice of every batch, epoch totals summed over the ranks, a shared stop flag,
    and resume from rank 0's state."""

    def __init__(self, ranks: Ranks):
        self.ranks = ranks
        self.world_size = ranks.world_size
        self.share = SliceShare()
        self.rank_images: list[int] = []  # each rank's images in the latest training pass
        self.batch_size, self.n_train = 0, 0

    def attach(self, trainer: Trainer) -> None:
        if trainer.config.pipeline:
            raise ConfigError(
                f"pipeline: got true under torchrun ({self.world_size} processes); allowed: "
                "pipeline false under torchrun, or a plain `workbench run` for the pipeline"
            )
        self.batch_size, self.n_train = trainer.config.batch_size, len(trainer.train_batches.y)
        self.check_batches(len(trainer.train_batches))
        self.device = trainer.device
        trainer.stop = RankStop(trainer.stop, self.ranks)
        if hasattr(trainer.train_batches, "shard"):  # streamed: workers read the rank's slices
            trainer.train_batches.shard = (self.ranks.rank, self.world_size)

    def parallel(self, module: nn.Module) -> nn.Module:
        if not any(p.requires_grad for p in module.parameters()):
            return module  # nothing to all-reduce (DDP refuses such a module)
        cuda = self.device.type == "cuda"
        # no buffer broadcast before each forward: BN statistics are re-estimated alike on
        # every rank by precise BN (the parameters and buffers are synced once, at the start)
        no_buffer_sync = {BUFFER_SYNC: False}
        ddp = DistributedDataParallel(
            module, device_ids=[self.device] if cuda else None, **no_buffer_sync
        )
        ddp.register_comm_hook(self.share, weighted_sum_hook)
        return ddp

    def check_batches(self, n_batches: int) -> None:
        """Refuse, before training, a batch with fewer images than ranks (a rank would have
        none, and its loss no mean)."""
        n, size, ranks = self.n_train, self.batch_size, self.world_size
        last = n - (n_batches - 1) * size
        if min(size, last) < ranks:
            raise ConfigError(
                f"batch_size: got {size} with {n} training images, so a batch holds only "
                f"{min(size, last)} images for {ranks} processes; allowed: a batch_size (and "
                f"n_train) giving every batch at least {ranks} images, one per process"
            )

    def slices(self, batches: Any, timed: Iterator[tuple[Tensor, Tensor]]) -> Iterator:
        """This rank's slice of each global batch (streamed batches arrive sliced)."""
        rank, world, size = self.ranks.rank, self.world_size, self.batch_size
        arrive_sliced = getattr(batches, "shard", None) == (rank, world)
        for i, (x, y) in enumerate(timed):
            if arrive_sliced:
                whole = min(size, self.n_train - i * size)
            else:
                whole = len(y)
                x, y = x.tensor_split(world)[rank], y.tensor_split(world)[rank]
            self.share.value = len(y) / whole
            yield x, y

    def combine(self, totals: list[list[float]], seen: int) -> tuple[list[list[float]], int]:
        """Losses, hits and images summed over the ranks."""
        per_rank = [0.0] * self.world_size
        per_rank[self.ranks.rank] = seen
        flat = self.ranks.sum([v for pair in totals for v in pair] + per_rank)
        self.rank_images = [int(v) for v in flat[len(flat) - len(per_rank) :]]
        summed = [flat[2 * i : 2 * i + 2] for i in range(len(totals))]
        return summed, sum(self.rank_images)

    def annotate(self, rows: list[dict[str, Any]]) -> None:
        """Training rows also say how many images each rank trained on."""
        for row in rows:
            if row["split"] == "train":
                row["rank_images"] = self.rank_images

    def restore(self, trainer: Trainer) -> tuple[int, int]:
        """Rank 0 restores from the run folder and sends the other ranks what it restored: the
        weights, the learners' states and its resume point."""
        state: dict[str, Any] | None = None
        if self.ranks.rank == 0:
            start = trainer.restore()
            state = {"start": start}
            if trainer.global_epoch:
                point = trainer.resume_point(*start, 0, trainer.elapsed_before)
                state.update(point=point.stored(), **trainer.training_state())
            state = _on_cpu(state)
        state = self.ranks.broadcast(state)
        assert state is not None
        if self.ranks.rank != 0 and "point" in state:
            trainer.load_training_state(state)  # copied into the parameters DDP holds
            point = ResumePoint.of(state["point"])
            assert point is not None
            trainer.take_resume_point(point)
        return tuple(state["start"])  # type: ignore[return-value]


def _on_cpu(obj: Any) -> Any:
    """`obj` with every tensor in it copied to the CPU (to pickle it for another rank)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj
