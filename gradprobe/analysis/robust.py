"""Robust statistics shared by the detectors: log-norms, median/MAD spread, binning, trends."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

# 1.4826 x MAD estimates the standard deviation of normally distributed data.
MAD_TO_SIGMA = 1.4826


def log10_norms(values: np.ndarray) -> np.ndarray:
    """log10 of ``values`` where they are finite and positive, NaN elsewhere."""
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values) & (values > 0)
    out = np.full(values.shape, np.nan)
    np.log10(values, out=out, where=ok)
    return out


def quiet(fn, *args, **kwargs):
    """Call a NaN-aware numpy reduction without its all-NaN / empty-slice warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs)


def nanmedian(values: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """Median ignoring NaN (NaN where nothing is left)."""
    return quiet(np.nanmedian, values, axis=axis)


def robust_sigma(values: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """Spread as 1.4826 x the median absolute deviation, ignoring NaN."""
    center = nanmedian(values, axis=axis)
    if axis is not None:
        center = np.expand_dims(center, axis)
    return MAD_TO_SIGMA * nanmedian(np.abs(values - center), axis=axis)


def bin_medians(values: np.ndarray, max_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Medians of at most ``max_bins`` consecutive, equal bins of rows (per column for 2-D input).

    Returns the index of each bin's first row and the bin medians (NaN for an
    all-NaN bin).
    """
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int64), values[:0]
    size = -(-n // min(n, max_bins))
    bins = -(-n // size)
    padded = np.concatenate([values, np.full((bins * size - n,) + values.shape[1:], np.nan)])
    medians = nanmedian(padded.reshape((bins, size) + values.shape[1:]), axis=1)
    return np.arange(bins) * size, medians


def theil_sen(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Theil-Sen slope of ``y`` on ``x`` with its 95% confidence bounds; NaN with fewer than 3 points."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan"), float("nan"), float("nan")
    result = stats.theilslopes(y[ok], x[ok], alpha=0.95)
    return float(result.slope), float(result.low_slope), float(result.high_slope)


def sustained_from(above: np.ndarray) -> np.ndarray:
    """For each column, the first row from which ``above`` holds until the last row (-1: never).

    Rows where a column is undetermined should be passed as True so they do
    not break a run.
    """
    above = np.asarray(above, dtype=bool)
    if above.ndim == 1:
        return sustained_from(above[:, None])[0]
    tail = np.flip(np.cumprod(np.flip(above, axis=0), axis=0), axis=0).astype(bool)
    start = np.argmax(tail, axis=0)
    return np.where(tail.any(axis=0), start, -1)
