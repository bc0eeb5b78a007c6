"""Gradient noise scale and what it implies for the batch size (McCandlish et al. 2018, appendix A).

A step that accumulated K micro-batches of b samples each saw gradients of two
batch sizes: each micro-batch's (B_small = b) and the accumulated one (B_big = Kb).
With |G_small|^2 the mean over the micro-batches of their squared norms and
|G_big|^2 = |sum of micro-batch gradients / K|^2, the unbiased estimates are::

    |G|^2  = (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(S)  = (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

and the simple noise scale is B_simple = tr(S) / |G|^2, the batch size at which
the gradient noise is as large as the gradient itself. Single-step estimates
are noisy, so both are smoothed with an exponential moving average (decay
:data:`EMA_DECAY`) and B_simple is the ratio of the averages, as McCandlish et
al. and Gray et al. (2024, "Normalization layer per-example gradients are
sufficient to predict gradient noise scale in transformers") do.

B_simple estimates the critical batch size: training to a given loss takes
(1 + B_simple / B) times the fewest possible steps and (1 + B / B_simple)
times the fewest possible samples (their eq. 2.11). Far below it, a larger
batch cuts the steps almost in proportion; far above it, samples are wasted.

Under DDP with W ranks the two gradients are one rank's and the all-reduced
one (:mod:`gradprobe.pytorch.replica_norms`): K = W and b is the rank's samples
per step (``replicas`` = W).

b is read from the ``batches`` table (samples the DataLoader handed out per
step, divided by the backward passes per rank, K / ``replicas``); without it,
sizes are in micro-batches. The gradients'
own scale (``loss / K`` or not, a loss scale) cancels in B_simple; |G|^2 and
tr(S) are in the units of the script's micro-batch gradients.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

EMA_DECAY = 0.95
NEAR = 2.0  # a batch within this factor of B_simple is "near" it


def _micro_batch_sizes(batches: pd.DataFrame | None, optimizer: int, steps: np.ndarray,
                       passes: np.ndarray) -> np.ndarray:
    """Samples per micro-batch at each step (NaN where the run did not record them)."""
    if batches is None or batches.empty:
        return np.full(len(steps), np.nan)
    rows = batches[(batches["optimizer"] == optimizer) & batches["kind"].isin(["indices", "positions"])]
    totals = rows.groupby("step")["count"].sum().reindex(steps).to_numpy(dtype=np.float64)
    return totals / passes


def replicas(meta: dict) -> int:
    """The data-parallel ranks of a run (``run.json``'s ``world``): under DDP each ``noise`` row
    compares one rank's gradient with the all-reduced one."""
    return max(1, int((meta.get("world") or {}).get("world_size") or 1))


def noise_scale(noise: pd.DataFrame, optimizer: int, batches: pd.DataFrame | None = None,
                replicas: int = 1) -> pd.DataFrame:
    """Per accumulating step of ``optimizer``: K, micro-batch size ``b`` (NaN: unknown), the
    per-step unbiased ``g2`` and ``trace`` (per micro-batch when b is unknown), their EMAs and
    ``b_simple`` (samples; in micro-batches when b is unknown), from the run's ``noise`` table.
    ``replicas``: the run's data-parallel ranks (:func:`replicas`)."""
    rows = noise[noise["optimizer"] == optimizer]
    rows = rows[rows["rank"] == rows["rank"].min()] if len(rows) else rows
    rows = rows.drop_duplicates("step", keep="last").sort_values("step")
    steps = rows["step"].to_numpy(dtype=np.int64)
    k = rows["micro_batches"].to_numpy(dtype=np.float64)
    small = rows["micro_sq"].to_numpy(dtype=np.float64)
    big = rows["total_sq"].to_numpy(dtype=np.float64) / k**2
    b = _micro_batch_sizes(batches, optimizer, steps, k / replicas)
    unit = np.where(np.isfinite(b) & (b > 0), b, 1.0)
    b_small, b_big = unit, unit * k
    g2 = (b_big * big - b_small * small) / (b_big - b_small)
    trace = (small - big) / (1.0 / b_small - 1.0 / b_big)
    ok = np.isfinite(g2) & np.isfinite(trace)
    g2_ema, trace_ema = _ema(g2, ok), _ema(trace, ok)
    with np.errstate(divide="ignore", invalid="ignore"):
        b_simple = np.where(g2_ema > 0, trace_ema / g2_ema, np.nan)
    return pd.DataFrame({"step": steps, "micro_batches": k.astype(np.int64), "micro_batch_size": b,
                         "g2": g2, "trace": trace, "g2_ema": g2_ema, "trace_ema": trace_ema,
                         "b_simple": b_simple})


def run_noise_scale(run, optimizer: int) -> pd.DataFrame:
    """:func:`noise_scale` of a loaded run's ``optimizer``, with its batches and ranks."""
    return noise_scale(run.noise, optimizer, run.batches, replicas(run.meta))


def _ema(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Bias-corrected exponential moving average of ``values`` where ``ok`` (held elsewhere)."""
    out = np.full(len(values), np.nan)
    mean, weight = 0.0, 0.0
    for i, (value, good) in enumerate(zip(values, ok)):
        if good:
            mean = EMA_DECAY * mean + (1 - EMA_DECAY) * value
            weight = EMA_DECAY * weight + (1 - EMA_DECAY)
        out[i] = mean / weight if weight else np.nan
    return out


def batch_advice(b_simple: float, batch: float, unit: str = "samples") -> str:
    """What a noise scale of ``b_simple`` says about the batch size ``batch`` (both in ``unit``)."""
    if not (math.isfinite(b_simple) and b_simple > 0 and math.isfinite(batch) and batch > 0):
        return "no usable estimate (the gradient signal was not above its noise)"
    steps, samples = 1 + b_simple / batch, 1 + batch / b_simple
    where = (f"the batch ({batch:.4g} {unit}) takes {steps:.2g}x the fewest possible steps and "
             f"{samples:.2g}x the fewest samples")
    if batch * NEAR < b_simple:
        return (f"{where}: the batch is below the noise scale, so a larger one (up to about "
                f"{b_simple:.3g} {unit}) would need almost proportionally fewer steps")
    if batch > NEAR * b_simple:
        return (f"{where}: the batch is above the noise scale, so part of each batch is wasted; about "
                f"{b_simple:.3g} {unit} with more steps would reach the same loss on fewer samples")
    return f"{where}: the batch is near the noise scale, a balanced trade-off between steps and samples"


def summary(frame: pd.DataFrame) -> dict | None:
    """The latest noise scale of a :func:`noise_scale` frame, the batch it was measured at and
    :func:`batch_advice`; None when the frame has no usable estimate."""
    usable = frame[np.isfinite(frame["b_simple"].to_numpy(dtype=np.float64))]
    if usable.empty:
        return None
    last = usable.iloc[-1]
    known = math.isfinite(last["micro_batch_size"])
    unit = "samples" if known else "micro-batches"
    batch = last["micro_batches"] * (last["micro_batch_size"] if known else 1.0)
    return {"step": int(last["step"]), "b_simple": float(last["b_simple"]), "batch": float(batch),
            "unit": unit, "steps": int(len(frame)), "advice": batch_advice(float(last["b_simple"]), batch, unit)}
