"""Step time of the quick-start CNN with and without gradprobe recording, in one process.

Variants are interleaved in rounds so that drift on the machine affects them
alike; the figure is the median ratio to the unrecorded baseline.

    python benchmarks/quickstart_overhead.py [--rounds 7] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import gradprobe  # noqa: E402
from quickstart import SmallCNN, make_data  # noqa: E402


def train(model, opt, images, labels, steps: int, batch: int = 64) -> float:
    """Seconds per step over ``steps`` optimizer steps."""
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for i in range(steps):
        idx = slice((i * batch) % len(images), (i * batch) % len(images) + batch)
        opt.zero_grad()
        loss_fn(model(images[idx]), labels[idx]).backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    torch.manual_seed(0)
    images, labels = make_data()
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    train(model, opt, images, labels, 10)  # warm-up
    times: dict[str, list[float]] = {"baseline": [], "every=10 (default)": [], "every=1": []}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.rounds):
            times["baseline"].append(train(model, opt, images, labels, args.steps))
            for label, every in (("every=10 (default)", 10), ("every=1", 1)):
                with gradprobe.watch(model, out=out, every=every):
                    times[label].append(train(model, opt, images, labels, args.steps))
    base = statistics.median(times["baseline"])
    result = {label: {"ms_per_step": 1e3 * statistics.median(t),
                      "ratio": statistics.median(t) / base} for label, t in times.items()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
