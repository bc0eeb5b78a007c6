"""Step-time overhead of gradprobe against the alternatives users reach for, in one process.

    python benchmarks/overhead.py [--models cnn,transformer] [--rounds 7] [--steps 20]
                                  [--json benchmarks/results/overhead.json]

Every variant trains the same model on the same fixed batch. Variants run
interleaved in rounds (in a rotated order each round) so that drift on the
machine affects them alike; each figure is the median over rounds of the
ratio to the baseline timed in the same round, with the interquartile range
as its spread. Beside the whole step, the CPU time from the end of
``backward()`` to the end of the optimizer step is timed alone: its excess
over the baseline's, as a share of the baseline step, measures what a tool
adds there with much less noise (wandb.watch works inside ``backward()``, so
only its whole-step ratio counts). gradprobe's variants write their buffered steps to disk at the
end of each round; that write is timed too and charged at the rate of the
default flush interval (``steps / 100`` writes per round). Ratios are of this process's CPU time per step, which other
processes competing for the cores disturb far less than wall-clock time (both
are in the JSON); with one torch thread the two agree on an idle machine.
Variants whose package is not installed are left out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gradprobe  # noqa: E402
from gradprobe.recording.session import DEFAULT_FLUSH_EVERY  # noqa: E402
from models import WORKLOADS, Workload  # noqa: E402

CLIP = 1.0


def _plain(_work: Workload) -> None:
    pass


def _clip_grad_norm(work: Workload) -> None:
    torch.nn.utils.clip_grad_norm_(work.params, CLIP)


def _per_parameter_logger(work: Workload) -> None:
    work.log.append([p.grad.norm().item() for p in work.params])


def _lightning_grad_norm(work: Workload) -> None:
    from lightning.pytorch.utilities import grad_norm

    work.log.append(grad_norm(work.model, norm_type=2))


@contextmanager
def _nothing(_work: Workload, _out: str) -> Iterator[None]:
    yield


def _gradprobe(every: int | None = None, clip: str | None = None):
    @contextmanager
    def context(work: Workload, out: str) -> Iterator[None]:
        kwargs = {"every": every} if every is not None else {}
        with gradprobe.watch(work.model, out=out, clip=clip, **kwargs) as recording:
            work.end_of_round = recording.flush  # a write to disk per round, timed with the steps
            try:
                yield
            finally:
                work.end_of_round = None

    return context


LOADER_SAMPLES, LOADER_BATCH = 640, 64


def _with_loader(context: Callable):
    """``context`` plus a DataLoader (shuffled, 10 batches an epoch) that the step draws a batch from,
    created inside it so that gradprobe, when ``context`` is gradprobe's, records which samples each
    step drew."""
    @contextmanager
    def with_loader(work: Workload, out: str) -> Iterator[None]:
        with context(work, out):
            train_loader = torch.utils.data.DataLoader(
                torch.utils.data.TensorDataset(torch.arange(LOADER_SAMPLES)), batch_size=LOADER_BATCH, shuffle=True)
            work.batches = itertools.chain.from_iterable(itertools.repeat(train_loader))
            try:
                yield
            finally:
                work.batches = None

    return with_loader


def _draw_batch(work: Workload) -> None:
    next(work.batches)


@contextmanager
def _wandb_watch(work: Workload, out: str) -> Iterator[None]:
    import wandb

    run = wandb.init(mode="offline", dir=out, project="gradprobe-overhead")
    run.watch(work.model, log="gradients", log_freq=1)
    work.after_step = lambda: run.log({})
    try:
        yield
    finally:
        work.after_step = None
        run.unwatch(work.model)
        run.finish()


def _installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# name -> (context around the timed steps, hook between backward and optimizer step, required module)
VARIANTS: dict[str, tuple[Callable, Callable, str | None]] = {
    "baseline": (_nothing, _plain, None),
    "clip_grad_norm_": (_nothing, _clip_grad_norm, None),
    "gradprobe every step": (_gradprobe(every=1), _plain, None),
    "gradprobe default sampling": (_gradprobe(), _plain, None),
    "gradprobe default sampling + global-norm clip": (_gradprobe(clip=f"global-norm:max={CLIP}"), _plain, None),
    "DataLoader batch per step": (_with_loader(_nothing), _draw_batch, None),
    "gradprobe default sampling + DataLoader batch per step (samples recorded)":
        (_with_loader(_gradprobe()), _draw_batch, None),
    "per-parameter logger": (_nothing, _per_parameter_logger, None),
    "lightning grad_norm": (_nothing, _lightning_grad_norm, "lightning"),
    "wandb.watch(log_freq=1)": (_wandb_watch, _plain, "wandb"),
}


def timed_steps(work: Workload, hook: Callable[[Workload], None], steps: int) -> tuple[float, float, float]:
    """CPU seconds, wall-clock seconds and CPU seconds of the update (from the end of ``backward()``
    to the end of the optimizer step, where gradient tools run) per training step."""
    work.log = []
    update = 0.0
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        work.optimizer.zero_grad()
        work.loss().backward()
        update_start = time.process_time()
        hook(work)
        work.optimizer.step()
        if work.after_step is not None:
            work.after_step()
        update += time.process_time() - update_start
    cpu, elapsed = time.process_time() - cpu_start, time.perf_counter() - start
    if work.end_of_round is not None:
        start, cpu_start = time.perf_counter(), time.process_time()
        work.end_of_round()
        share = steps / DEFAULT_FLUSH_EVERY  # one write per DEFAULT_FLUSH_EVERY steps
        flush = share * (time.process_time() - cpu_start)
        cpu, update = cpu + flush, update + flush
        elapsed += share * (time.perf_counter() - start)
    return cpu / steps, elapsed / steps, update / steps


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def bench_model(name: str, variants: list[str], rounds: int, steps: int, out: str) -> dict:
    """Interleaved rounds of every variant on one model; ratios to the same round's baseline."""
    work = WORKLOADS[name]()
    work.log, work.after_step, work.end_of_round = [], None, None
    timed_steps(work, _plain, max(3, steps // 2))  # warm-up: allocator, kernels, optimizer state
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    wall: dict[str, list[float]] = {v: [] for v in variants}
    update: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for variant in order:
            context, hook, _ = VARIANTS[variant]
            with ExitStack() as stack:
                stack.enter_context(context(work, out))
                cpu, elapsed, in_update = timed_steps(work, hook, steps)
            seconds[variant].append(cpu)
            wall[variant].append(elapsed)
            update[variant].append(in_update)
        print(f"  {name}: round {r + 1}/{rounds}", file=sys.stderr)
    base = seconds["baseline"]
    result = {"model": name, **work.describe(), "steps_per_round": steps, "rounds": rounds, "variants": {}}
    for variant, times in seconds.items():
        ratios = [t / b for t, b in zip(times, base)]
        q1, median, q3 = _quartiles(ratios)
        result["variants"][variant] = {
            "ms_per_step": 1e3 * statistics.median(times),
            "ratio": median,
            "ratio_q1": q1,
            "ratio_q3": q3,
            "cpu_seconds": times,
            "wall_ms_per_step": 1e3 * statistics.median(wall[variant]),
            "wall_ratio": statistics.median(t / b for t, b in zip(wall[variant], wall["baseline"])),
            "wall_seconds": wall[variant],
            "added_update_ms": 1e3 * statistics.median(u - b for u, b in zip(update[variant], update["baseline"])),
            "added_update_fraction": statistics.median(
                (u - b) / t for u, b, t in zip(update[variant], update["baseline"], base)),
        }
    return result


def print_table(results: list[dict]) -> None:
    """A Markdown table per model: CPU ms per step, ratio to baseline [interquartile range], and the CPU
    time added to the update (end of backward to end of step) in ms and as a share of the baseline step."""
    header = "| variant | " + " | ".join(
        f"{r['model']} ({r['parameters'] / 1e6:.1f}M params, {r['tensors']} tensors)" for r in results) + " |"
    print(header)
    print("|" + "---|" * (len(results) + 1))
    for variant in results[0]["variants"]:
        cells = []
        for r in results:
            v = r["variants"][variant]
            cells.append(f"{v['ms_per_step']:.1f} ms, {v['ratio']:.3f}x [{v['ratio_q1']:.3f}-{v['ratio_q3']:.3f}], "
                         f"update +{v['added_update_ms']:.2f} ms ({100 * v['added_update_fraction']:+.1f}%)")
        print(f"| {variant} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,transformer", help="comma-separated: " + ",".join(WORKLOADS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant per round")
    parser.add_argument("--variants", default=None, help="comma-separated subset (default: all installed)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "overhead.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    variants = [v for v in variants if VARIANTS[v][2] is None or _installed(VARIANTS[v][2])]
    if "baseline" not in variants:
        variants.insert(0, "baseline")
    results = []
    with tempfile.TemporaryDirectory() as out:
        for name in args.models.split(","):
            results.append(bench_model(name, variants, args.rounds, args.steps, out))
    print_table(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
