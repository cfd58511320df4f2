"""The process group and the few collectives the training loop needs (see samtune.train.ddp
for the design: how N ranks of batch b make exactly the step of one process with batch N·b).

Every function is a no-op (or the identity) for rank 0 of 1, so the loop has no branches for
the single-process case.
"""
from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Subset

if TYPE_CHECKING:  # only a type here; importing losses pulls in MONAI
    from samtune.train.losses import LossParts

__all__ = ["DistContext", "PooledLoss", "SEED_STRIDE", "in_worker", "context", "process_group",
           "resolve_device", "broadcast_state", "pool_loss", "sync_gradients", "all_sum", "agree",
           "gather", "barrier", "shard"]

SEED_STRIDE = 1_000_003  # rank r seeds its RNGs with seed + r·SEED_STRIDE (rank 0: the seed)
BUCKET_BYTES = 25 * 2**20  # gradient all_reduce buckets, as DDP's default


def in_worker() -> bool:
    """Inside a torchrun worker (its RANK and WORLD_SIZE are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@dataclass(frozen=True)
class DistContext:
    """This process's place: rank 0 of 1 without distributed training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context() -> DistContext:
    """The current process group's context (rank 0 of 1 when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(dist.get_rank(), dist.get_world_size(),
                       int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def resolve_device(name: str, ctx: DistContext | None = None) -> torch.device:
    """`train.device` → the device: "auto" is CUDA when available; with several ranks on CUDA
    each takes cuda:LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA device is available (use 'auto')")
    if name == "cuda" and ctx is not None and ctx.enabled:
        return torch.device("cuda", ctx.local_rank)
    return torch.device(name)


@contextlib.contextmanager
def process_group(backend: str = "auto", device: str = "auto") -> Iterator[DistContext]:
    """Join the process group: the one already open, or a new one when torchrun's WORLD_SIZE is
    > 1 (destroyed on exit); a plain process gets rank 0 of 1. backend "auto": nccl on CUDA,
    gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if (dist.is_available() and dist.is_initialized()) or world == 1:
        yield context()
        return
    local = DistContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    dev = resolve_device(device, local)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError("train.distributed.backend 'nccl' needs CUDA; use 'gloo' on the CPU")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    # A long timeout: the other ranks wait in a collective while rank 0 writes a checkpoint.
    dist.init_process_group(backend, timeout=timedelta(minutes=60),
                            device_id=dev if backend == "nccl" else None)
    try:
        yield context()
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------- collectives
def broadcast_state(model: torch.nn.Module, ctx: DistContext) -> None:
    """Every floating-point parameter and buffer from rank 0 (as DDP does when it wraps), so
    the ranks start from the same weights whatever their builds drew."""
    if not ctx.enabled:
        return
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            data = t.data.contiguous()
            dist.broadcast(data, src=0)
            if data.data_ptr() != t.data.data_ptr():
                t.data.copy_(data)


@dataclass
class PooledLoss:
    """A micro-batch's loss over all ranks: means over the n instances of the global batch.
    weight: this rank's n_r / n, the factor on its own loss before backward."""

    total: float
    seg: float
    iou: float
    instances: int
    weight: float


def pool_loss(parts: LossParts | None, n: int, ctx: DistContext,
              device: torch.device) -> PooledLoss | None:
    """The global loss of a micro-batch (None when no rank has an instance): one all_reduce.
    A non-finite loss on any rank makes the pooled one non-finite on every rank."""
    if not ctx.enabled:
        return None if parts is None else PooledLoss(parts.total.item(), parts.seg.item(),
                                                     parts.iou.item(), n, 1.0)
    local = [0.0] * 4 if parts is None else \
        [float(n)] + [n * t.item() for t in (parts.total, parts.seg, parts.iou)]
    stats = torch.tensor(local, dtype=torch.float64, device=device)
    dist.all_reduce(stats)
    total_n, total, seg, iou = stats.tolist()
    if total_n == 0:
        return None
    return PooledLoss(total / total_n, seg / total_n, iou / total_n, int(total_n), n / total_n)


def sync_gradients(params: Iterable[torch.nn.Parameter], ctx: DistContext) -> None:
    """Sum the trainable parameters' gradients over the ranks (bucketed all_reduce). A gradient
    no rank produced stays None; one missing on some ranks counts as zero there."""
    if not ctx.enabled:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    used = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
    dist.all_reduce(used)
    grads = []
    for p, u in zip(params, used.tolist()):
        if u:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
    grads.sort(key=lambda g: (str(g.dtype), str(g.device)))
    for _, group in itertools.groupby(grads, key=lambda g: (g.dtype, g.device)):
        bucket: list[torch.Tensor] = []
        for g in group:
            bucket.append(g)
            if sum(b.numel() * b.element_size() for b in bucket) >= BUCKET_BYTES:
                _all_reduce_flat(bucket)
                bucket = []
        if bucket:
            _all_reduce_flat(bucket)


def _all_reduce_flat(tensors: list[torch.Tensor]) -> None:
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def all_sum(values: Sequence[float], ctx: DistContext, device: torch.device) -> list[float]:
    """Element-wise sums over the ranks (float64)."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def agree(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """Rank 0's decision, on every rank."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def gather(obj: Any, ctx: DistContext) -> list[Any] | None:
    """Every rank's `obj` on rank 0 (by rank), None elsewhere; [obj] without distribution."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


class _StridedBatches:
    """Every world_size-th ready batch from rank on (validation shards of ready batches)."""

    def __init__(self, data: Iterable[Any], rank: int, world_size: int):
        self.data, self.rank, self.world_size = data, rank, world_size

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.data), self.rank, None, self.world_size)


def shard(data: Any, ctx: DistContext) -> Any:
    """This rank's share of (validation) data: slices rank, rank + N, … (or those batches)."""
    if not ctx.enabled or data is None:
        return data
    if isinstance(data, Dataset):
        return Subset(data, range(ctx.rank, len(data), ctx.world_size))  # type: ignore[arg-type]
    return _StridedBatches(data, ctx.rank, ctx.world_size)
