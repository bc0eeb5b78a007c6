"""Step-time cost of the update-norm and micro-batch-norm measurements, side by side in one process.

    python benchmarks/signals_overhead.py [--models cnn,transformer] [--rounds 5] [--steps 8] [--every 1]

gradprobe records each workload twice, interleaved in rounds (order rotated each
round): as it ships, and with the two measurements switched off (``watch(signals=False)``,
``--no-signals``), everything else alike. Both measure only the steps that sample
per-layer statistics: ``--every 1`` (all steps) is the worst case, the default
sampling is ``--every 10``. Each runs with one backward pass per step and with 4 accumulated
micro-batches (each step then calls ``loss().backward()`` four times). Figures
are medians over rounds of this process's CPU time per step, as the ratio of
"on" to "off" and as added milliseconds per step.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gradprobe  # noqa: E402
from models import WORKLOADS  # noqa: E402


def timed(work, on: bool, accumulate: int, steps: int, every: int, out: str) -> float:
    """CPU seconds per optimizer step under gradprobe."""
    with gradprobe.watch(work.model, out=out, every=every, signals=on) as recording:
        for _ in range(2):  # warm-up: the first steps register the buffers
            for _ in range(accumulate):
                work.loss().backward()
            work.optimizer.step()
            work.optimizer.zero_grad()
        start = time.process_time()
        for _ in range(steps):
            for _ in range(accumulate):
                work.loss().backward()
            work.optimizer.step()
            work.optimizer.zero_grad()
        elapsed = time.process_time() - start
        recording.flush()
    return elapsed / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,transformer")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--every", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.models.split(","):
        work = WORKLOADS[name]()
        for accumulate in (1, 4):
            times: dict[bool, list[float]] = {True: [], False: []}
            with tempfile.TemporaryDirectory() as out:
                for round_ in range(args.rounds):
                    for on in itertools.islice(itertools.cycle((True, False)), round_ % 2, round_ % 2 + 2):
                        times[on].append(timed(work, on, accumulate, args.steps, args.every, out))
            ratios = [a / b for a, b in zip(times[True], times[False])]
            added = [(a - b) * 1e3 for a, b in zip(times[True], times[False])]
            print(f"{name} ({work.describe()['parameters']:,} parameters), {accumulate} backward pass(es)/step: "
                  f"off {statistics.median(times[False]) * 1e3:.1f} ms/step, on/off "
                  f"{statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}), "
                  f"+{statistics.median(added):.2f} ms/step at every={args.every}")


if __name__ == "__main__":
    main()
