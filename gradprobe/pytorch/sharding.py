"""Sharded parameters (FSDP's ``fully_shard``): each rank holds a shard of every sharded parameter.

gradprobe reads only the local shards, so recording adds no collective: every
rank stores the norms of its shards, whose squares add up, across ranks, to
the squares of the full gradient's norms, and the run reader combines them
(:mod:`gradprobe.store.shards`). Parameters that are not sharded (replicated
on every rank) count once, on rank 0. Clipping needs the true norms before it
scales anything: one all-reduce of the per-parameter sums of squares.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a build without torch.distributed
        return None
    return DTensor


def local(t: torch.Tensor) -> torch.Tensor:
    """The part of ``t`` this rank holds (the tensor itself unless it is a DTensor)."""
    dtensor = _dtensor_type()
    return t.to_local() if dtensor is not None and isinstance(t, dtensor) else t


def is_sharded(t: torch.Tensor) -> bool:
    """Whether ``t`` is a DTensor split across ranks (any ``Shard`` placement)."""
    dtensor = _dtensor_type()
    if dtensor is None or not isinstance(t, dtensor):
        return False
    return any(placement.is_shard() for placement in t.placements)


def counted(sharded: list[bool], rank: int, device: torch.device) -> torch.Tensor:
    """1 where this rank's value counts towards the cross-rank sum of squares, else 0: every shard,
    and replicated parameters on rank 0 only."""
    return torch.tensor([1.0 if s or rank == 0 else 0.0 for s in sharded], device=device)


def full_norms(local_norms: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The full parameters' L2 norms from every rank's shard norms (one all-reduce)."""
    import torch.distributed as dist

    squares = local_norms.square() * weights
    dist.all_reduce(squares)
    return squares.sqrt()
