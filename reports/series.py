"""Downsampling long per-step series for plots and sparklines without losing their spikes."""

from __future__ import annotations

import numpy as np

from gradprobe.analysis.robust import quiet


def envelope(values: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split ``values`` into at most ``points`` consecutive bins: each bin's first index and its
    finite minimum, median and maximum (NaN for a bin without finite values)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0:
        empty = np.zeros(0)
        return np.zeros(0, dtype=np.int64), empty, empty, empty
    size = -(-n // max(1, min(n, points)))
    bins = -(-n // size)
    padded = np.full(bins * size, np.nan)
    padded[:n] = np.where(np.isfinite(values), values, np.nan)
    shaped = padded.reshape(bins, size)
    low, mid, high = (quiet(f, shaped, axis=1) for f in (np.nanmin, np.nanmedian, np.nanmax))
    return np.arange(bins) * size, low, mid, high


def nonfinite_bins(values: np.ndarray, points: int) -> np.ndarray:
    """For the same bins as :func:`envelope`, whether any value in the bin is NaN or Inf."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=bool)
    size = -(-n // max(1, min(n, points)))
    bins = -(-n // size)
    padded = np.zeros(bins * size, dtype=bool)
    padded[:n] = ~np.isfinite(values)
    return padded.reshape(bins, size).any(axis=1)
