"""Host memory of a long recorded run: RSS after 10,000 steps against RSS after 1,000.

    python benchmarks/memory.py [--steps 10000] [--every 1]

A small MLP trains on a fixed batch under ``gradprobe.watch`` (per-layer
statistics every ``--every`` steps, a Parquet part every 100 steps); the
process's resident set size is read from ``/proc/self/statm`` at steps
1,000 and ``--steps``. Recording should keep memory flat: buffers are fixed
size and flushed parts are not kept in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch
from torch import nn

import gradprobe


def rss_mb() -> float:
    """Resident set size of this process, in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(64, 64), nn.ReLU())], nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 64), torch.randn(32, 1)
    marks = {}
    with tempfile.TemporaryDirectory() as out:
        with gradprobe.watch(model, out=out, every=args.every):
            for step in range(1, args.steps + 1):
                opt.zero_grad()
                nn.functional.mse_loss(model(x), y).backward()
                opt.step()
                if step in (1_000, args.steps):
                    marks[step] = rss_mb()
    first, last = marks[1_000], marks[args.steps]
    print(json.dumps({"rss_mb_at_1000": round(first, 2), f"rss_mb_at_{args.steps}": round(last, 2),
                      "growth_mb": round(last - first, 2)}))


if __name__ == "__main__":
    main()
