"""Builders shared by the analysis and report tests: synthetic runs written through the real run
store, and tiny PyTorch trainings recorded with ``gradprobe.watch`` (no tests here)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

import gradprobe
from gradprobe.store import RunWriter


def write_run(
    root: Path,
    name: str,
    global_norm: Sequence[float],
    layer_norms: np.ndarray | None = None,
    layer_names: Sequence[str] = (),
    groups: Sequence[str] | None = None,
    shapes: Sequence[Sequence[int]] | None = None,
    every: int = 1,
    loss: Sequence[float] | None = None,
    clip_threshold: Sequence[float] | None = None,
    clip_scale: Sequence[float] | None = None,
    global_norm_post: Sequence[float] | None = None,
    skipped: Sequence[bool] | None = None,
    nonfinite: np.ndarray | None = None,
    maxabs: np.ndarray | None = None,
    param_norms: np.ndarray | None = None,
    optimizer: int = 0,
    rank: int = 0,
    writer: RunWriter | None = None,
    layer_offset: int = 0,
) -> RunWriter:
    """Write one optimizer's steps (and layer rows every ``every`` steps; NaN = no gradient) as a run."""
    n = len(global_norm)
    names = list(layer_names)
    if writer is None:
        layers = [{"id": i, "name": nm, "shape": list(shapes[i]) if shapes else [4, 4],
                   "numel": int(np.prod(shapes[i])) if shapes else 16, "dtype": "float32",
                   "group": groups[i] if groups else nm.split(".")[0], "optimizer": optimizer}
                  for i, nm in enumerate(names)]
        (root / name).mkdir(parents=True)
        writer = RunWriter(root / name, {"status": "finished", "framework": {"name": "test", "version": "0"},
                                         "script": "synthetic.py", "start_time": time.time(), "layers": layers,
                                         "sampling": {"every": every}, "optimizers": [{"index": optimizer}]})
    norms = np.asarray(global_norm, dtype=np.float64)
    nan = np.full(n, np.nan)
    writer.append("steps", {
        "step": np.arange(n), "optimizer": np.full(n, optimizer), "rank": np.full(n, rank),
        "time": np.arange(n, dtype=float), "global_norm": norms,
        "global_norm_post": norms if global_norm_post is None else np.asarray(global_norm_post),
        "clip_scale": np.ones(n) if clip_scale is None else np.asarray(clip_scale),
        "clip_threshold": nan if clip_threshold is None else np.asarray(clip_threshold),
        "loss": nan if loss is None else np.asarray(loss), "skipped": np.zeros(n, bool) if skipped is None
        else np.asarray(skipped),
    })
    if layer_norms is not None:
        grid = np.asarray(layer_norms, dtype=np.float64)
        sampled = np.arange(0, n, every)
        rows, cols = np.nonzero(~np.isnan(grid[sampled]))
        pick = lambda m, default: (np.asarray(m, dtype=np.float64)[sampled][rows, cols]  # noqa: E731
                                   if m is not None else default)
        writer.append("layers", {
            "step": sampled[rows], "optimizer": np.full(len(rows), optimizer), "rank": np.full(len(rows), rank),
            "layer": cols + layer_offset, "norm": grid[sampled][rows, cols],
            "maxabs": pick(maxabs, grid[sampled][rows, cols] / 2),
            "nonfinite": pick(nonfinite, np.zeros(len(rows))).astype(np.int64),
            "param_norm": pick(param_norms, np.ones(len(rows))),
        })
    return writer


def noisy(n: int, level: float = 1.0, spread: float = 0.1, seed: int = 0) -> np.ndarray:
    """A healthy-looking norm series: ``level`` times log-normal noise of ``spread`` decades."""
    return level * 10 ** (np.random.default_rng(seed).normal(0.0, spread, n))


def record(model, train: Callable[[], None], out: Path, name: str, every: int = 1) -> gradprobe.Run:
    """Run ``train()`` under ``gradprobe.watch(model, every=every)`` and load the run."""
    with gradprobe.watch(model, out=out, name=name, every=every) as rec:
        train()
    return gradprobe.load_run(rec.path)
