"""What a policy reads to propose its own settings from a recorded run: :class:`History` in,
:class:`Suggestion` out (see :meth:`~gradprobe.policies.base.Policy.suggest`)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class History:
    """One optimizer's recorded statistics, limited to the healthy part of the run.

    ``global_norms``: the finite pre-clip global L2 norms of the steps that
    were applied (not skipped). ``layer_norms`` / ``layer_maxabs`` /
    ``param_norms``: sampled-step x layer arrays of the per-layer gradient L2
    norm, gradient max-abs and parameter L2 norm (NaN where a layer had no
    gradient). ``note`` / ``layer_note`` say where the global / sampled rows
    stop (``" before the trouble at step N"``), empty when they cover the run.
    """

    global_norms: np.ndarray
    layer_norms: np.ndarray
    layer_maxabs: np.ndarray
    param_norms: np.ndarray
    note: str = ""
    layer_note: str = ""

    @property
    def has_layers(self) -> bool:
        """Whether per-layer statistics were recorded."""
        return len(self.layer_norms) > 0

    def largest(self, grid: np.ndarray, p: float) -> float:
        """The ``p``-th percentile over the sampled steps of each step's largest value in ``grid`` (one
        of the per-layer arrays, or an array of their shape); NaN without per-layer statistics."""
        return percentile(row_max(grid), p) if self.has_layers else math.nan


@dataclass(frozen=True)
class Suggestion:
    """A spec a policy proposes and why, in one sentence. ``layer_threshold``: the per-parameter
    norm bound, when the policy has one, so that a report can list the layers it would clip."""

    spec: str
    rationale: str
    layer_threshold: float | None = None


def percentile(values: np.ndarray, p: float) -> float:
    """The ``p``-th percentile of the finite, positive ``values`` (NaN when none)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values) & (values > 0)]
    return float(np.percentile(values, p)) if values.size else float("nan")


def row_max(grid: np.ndarray) -> np.ndarray:
    """The largest value of each row, ignoring NaN (NaN for an all-NaN row)."""
    with warnings.catch_warnings():  # an all-NaN row is NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmax(grid, axis=1)


def round_sig(value: float, digits: int = 3) -> float:
    """``value`` rounded to ``digits`` significant digits."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - int(math.floor(math.log10(abs(value)))))


def spec_number(value: float) -> str:
    """A threshold as written in a suggested spec: 3 significant digits."""
    return f"{round_sig(value):g}"
