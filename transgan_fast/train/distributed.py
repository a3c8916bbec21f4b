"""Data-parallel plumbing: torchrun environment, gradient averaging, rank-0 helpers.

The trainer does not wrap its networks in `DistributedDataParallel`: the WGAN-GP step runs D
three times and differentiates through it twice (`create_graph=True`) before one backward, which
DDP's reducer does not support. Instead, like StyleGAN2-ADA, each rank computes gradients on its
slice of the global batch and `all_reduce_grads` averages them (one flat all-reduce per network).
With per-sample-mean losses this is exactly the single-process gradient of the global batch.
NCCL is used on GPU, gloo on CPU. Without torchrun (no WORLD_SIZE) everything is single-process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "init_from_env", "all_gather_object", "all_reduce_grads", "broadcast_module", "global_mean",
           "split_batch"]


@dataclass
class DistEnv:
    """Rank, world size and device of this process."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()


def init_from_env(device: str = "auto") -> DistEnv:
    """Join the process group torchrun describes (WORLD_SIZE/RANK/LOCAL_RANK), if any.

    `device`: "auto" (CUDA if available, else CPU), "cpu" or "cuda".
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"init_from_env: device must be 'auto', 'cpu' or 'cuda'; got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("init_from_env: device='cuda' but no CUDA device is available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistEnv(rank, world, local, dev)


def split_batch(global_batch: int, world_size: int, what: str = "batch") -> int:
    """Per-rank batch; errors unless `global_batch` divides evenly."""
    if global_batch < 1 or global_batch % world_size:
        raise ValueError(f"{what}={global_batch} must be a positive multiple of the world size "
                         f"{world_size}")
    return global_batch // world_size


def all_reduce_grads(params: Iterable[torch.nn.Parameter], env: DistEnv) -> None:
    """Average `.grad` of `params` over ranks (missing grads count as zeros)."""
    if not env.active:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                      for p in params])
    dist.all_reduce(flat)
    flat /= env.world_size
    offset = 0
    for p in params:
        n = p.numel()
        g = flat[offset:offset + n].view_as(p)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
        offset += n


def broadcast_module(module: torch.nn.Module, env: DistEnv) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not env.active:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def global_mean(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of a (detached) tensor over ranks."""
    if not env.active:
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / env.world_size


def all_gather_object(obj, env: DistEnv) -> list:
    """`[obj of rank 0, obj of rank 1, ...]` (picklable objects; `[obj]` in a single process)."""
    if not env.active:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out
