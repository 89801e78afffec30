"""Data parallelism through torch.distributed, for processes started by torchrun (gloo on CPU, NCCL on CUDA).

A stage launched with N processes follows exactly the global batches of a one-process run: every rank takes
rows rank, rank+N, ... of each global batch, weights its loss by its share of the batch's rows, and the gradients
are summed across ranks before clipping and the optimizer step, so every rank applies the same update. Rank 0 alone
writes checkpoints, outputs and logs. Without torchrun (no WORLD_SIZE in the environment) everything here is a
no-op and the code runs as one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


_world = World()


def world() -> World:
    return _world


def init_from_env(timeout_minutes: float = 120.0) -> World:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_*).

    The timeout bounds how long a rank waits for the others at a collective: rank 0 evaluates and writes
    checkpoints while the others wait, which may take minutes on a slow CPU. A rank that dies does not leave
    the others waiting for it: torchrun stops the whole group when any process exits with an error.
    """
    global _world
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return _world
    if not dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)  # "cuda" then means this rank's own GPU
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    _world = World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return _world


def shutdown() -> None:
    global _world
    if dist.is_initialized():
        dist.destroy_process_group()
    _world = World()


def _device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo reduces CPU tensors
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over ranks (in place; returned for convenience)."""
    if not _world.active:
        return t
    dev = _device()
    buf = t.to(dev)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    if buf is not t:
        t.copy_(buf)
    return t


def reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over ranks, in one flat buffer (one collective per optimizer step).

    A parameter whose gradient is None on every rank (unused by the objective) stays None, so AdamW skips it
    exactly as in a one-process run; one that has a gradient on some rank gets the sum.
    """
    if not _world.active:
        return
    ref = params[0]
    parts, has = [], []
    for p in params:
        has.append(1.0 if p.grad is not None else 0.0)
        parts.append((p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float())
    flat = torch.cat(parts + [torch.tensor(has, device=ref.device)])
    all_reduce_sum(flat)
    offset = 0
    for p in params:
        n = p.numel()
        chunk = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.copy_(chunk)
    for p, flag in zip(params, flat[offset:].tolist()):
        if flag == 0.0:
            p.grad = None


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (the same start, and the same end after best-state selection)."""
    if not _world.active:
        return
    dev = _device()
    with torch.no_grad():
        for t in module.state_dict().values():
            buf = t.to(dev)
            dist.broadcast(buf, src=0)
            if buf is not t:
                t.copy_(buf)


def rank0_value(value):
    """Rank 0's value (any picklable object) on every rank: one decision taken once, e.g. whether a cache exists."""
    if not _world.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=_device() if dist.get_backend() == "nccl" else None)
    return box[0]


def gather_objects(value) -> list:
    """Every rank's value, in rank order, on every rank."""
    if not _world.active:
        return [value]
    out = [None] * _world.size
    dist.all_gather_object(out, value)
    return out


def barrier() -> None:
    if _world.active:
        dist.barrier()


def shard_rows(n: int) -> range:
    """This rank's rows of an n-row pass that every rank computes part of (contiguous blocks, rank order)."""
    per = -(-n // _world.size)
    return range(min(n, _world.rank * per), min(n, (_world.rank + 1) * per))
