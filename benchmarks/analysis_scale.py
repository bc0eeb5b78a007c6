"""Time and memory of analysing and rendering a large run (default 100,000 steps x 200 layers).

    python benchmarks/analysis_scale.py [--steps N] [--layers L] [--every K] [--out DIR]

Writes a synthetic run with the run store's own writer (global norm every
step, per-layer rows every K steps; noisy log-normal norms, a slow drift,
spikes and a dead layer so that the detectors have work to do), then, in
this process, times each phase: reading the run, splitting it into
per-layer matrices, diagnosing, replaying the six recommendation
strategies, and rendering the terminal, JSON and HTML reports. Prints one
line per phase with the wall time and the peak resident memory so far.
"""

from __future__ import annotations

import argparse
import io
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

import gradprobe
from gradprobe.analysis import diagnose, recommend, split_streams
from gradprobe.reports.html import render_html
from gradprobe.reports.json_report import render_json
from gradprobe.reports.summary import Report
from gradprobe.reports.terminal import render_report
from gradprobe.store import RunWriter

CHUNK = 1000


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def generate(path: Path, steps: int, layers: int, every: int, seed: int = 0) -> None:
    """Write the synthetic run to ``path``."""
    rng = np.random.default_rng(seed)
    table = [{"id": i, "name": f"blocks.{i // 4}.{('attn', 'mlp')[i // 2 % 2]}.{('weight', 'bias')[i % 2]}",
              "shape": [256, 256] if i % 2 == 0 else [256], "numel": 65536 if i % 2 == 0 else 256,
              "dtype": "float32", "group": f"blocks{i // 40}", "optimizer": 0} for i in range(layers)]
    path.mkdir(parents=True)
    writer = RunWriter(path, {"status": "finished", "framework": {"name": "synthetic", "version": "0"},
                              "script": "synthetic.py", "start_time": time.time(), "layers": table,
                              "sampling": {"every": every}, "optimizers": [{"index": 0, "class": "AdamW"}]})
    level = rng.normal(-1.0, 0.5, layers)
    drift = np.linspace(0.0, -0.3, steps)
    for start in range(0, steps, CHUNK):
        step = np.arange(start, min(steps, start + CHUNK))
        n = len(step)
        log_layers = level[None, :] + drift[step, None] + rng.normal(0, 0.1, (n, layers))
        spikes = rng.random(n) < 2e-4
        log_layers[spikes] += 1.5
        norms = 10.0**log_layers
        norms[:, layers - 1] = 0.0  # a dead layer
        global_norm = np.sqrt((norms**2).sum(axis=1))
        writer.append("steps", {
            "step": step, "optimizer": np.zeros(n), "rank": np.zeros(n), "time": step * 0.1,
            "global_norm": global_norm, "global_norm_post": global_norm, "clip_scale": np.ones(n),
            "clip_threshold": np.full(n, np.nan), "loss": 3.0 * np.exp(-step / steps) + rng.normal(0, 0.05, n),
            "skipped": np.zeros(n, bool),
        })
        rows = step % every == 0
        k = int(rows.sum())
        sampled = norms[rows]
        writer.append("layers", {
            "step": np.repeat(step[rows], layers), "optimizer": np.zeros(k * layers), "rank": np.zeros(k * layers),
            "layer": np.tile(np.arange(layers), k), "norm": sampled.ravel(), "maxabs": sampled.ravel() / 50,
            "nonfinite": np.zeros(k * layers, np.int64), "param_norm": np.full(k * layers, 10.0),
        })


def timed(label: str, fn):
    """Run ``fn`` and print its wall time and the peak memory so far."""
    start = time.perf_counter()
    result = fn()
    print(f"{label:<34} {time.perf_counter() - start:7.2f} s   peak RSS {peak_rss_mib():7.0f} MiB", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--layers", type=int, default=200)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="Keep the run here (default: a temporary directory).")
    args = parser.parse_args()

    root = args.out or Path(tempfile.mkdtemp(prefix="gradprobe-scale-"))
    path = root / f"scale-{args.steps}x{args.layers}-every{args.every}"
    try:
        if not path.exists():
            t = time.perf_counter()
            generate(path, args.steps, args.layers, args.every)
            print(f"generated {path} in {time.perf_counter() - t:.1f} s (not counted)")
        begin = time.perf_counter()
        run = gradprobe.load_run(path)
        timed("read steps + layers", lambda: (run.steps, run.layers))
        streams = timed("split into per-layer matrices", lambda: [s for s in split_streams(run) if s.present.size])
        findings = timed("diagnose (7 detectors)", lambda: diagnose(streams))
        recs = timed("recommend (6 strategies, replayed)", lambda: recommend(streams, findings))
        report = Report(run, streams, findings, recs)
        console = Console(file=io.StringIO(), width=160)
        timed("render terminal", lambda: render_report(report, console))
        json_text = timed("render json", lambda: render_json(report))
        html_text = timed("render html (charts + 2 figures)", lambda: render_html(report))
        total = time.perf_counter() - begin
        print(f"{'total':<34} {total:7.2f} s   peak RSS {peak_rss_mib():7.0f} MiB")
        print(f"findings: {', '.join(f'{f.kind} ({f.severity})' for f in findings) or 'none'}; "
              f"json {len(json_text) / 1e3:.0f} kB, html {len(html_text) / 1e6:.1f} MB")
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
