"""Data-parallel training on CPU: two processes (gloo), DistributedDataParallel or FSDP, synthetic data.

    gradprobe profile --nproc-per-node 2 examples/train_ddp.py -- --steps 30
    torchrun --nproc-per-node 2 -m gradprobe profile examples/train_ddp.py
    gradprobe run --clip global-norm:max=1 --nproc-per-node 2 examples/train_ddp.py -- --fsdp

Each rank trains on its own shard of a synthetic regression set; DDP averages
the gradients across ranks during ``backward()``, so every rank steps with the
same gradient and rank 0's record stands for all of them. ``--fsdp`` shards
every layer with ``fully_shard`` instead: each rank then holds (and records)
a shard of each gradient, and the run reader puts them together. ``--diverge``
skips the DDP wrapper: each rank then trains its own model on its own data,
the mistake ``gradprobe profile --all-ranks`` reports as rank divergence.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from torch import nn


def make_model() -> nn.Module:
    """A small MLP with the same initial weights on every rank."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))


def shard(rank: int, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's fixed batch of a synthetic linear target with noise."""
    generator = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(batch, 16, generator=generator)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(batch, 1, generator=generator)
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--fsdp", action="store_true", help="shard the model with fully_shard (FSDP2)")
    parser.add_argument("--diverge", action="store_true", help="train without DDP (ranks drift apart)")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = make_model()
    if args.fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
    elif not args.diverge:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = shard(rank)
    for step in range(args.steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    if rank == 0:
        print(f"final loss {loss.item():.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
