"""The recorded loss as evidence: over a span of steps, did training keep improving?

A gradient finding often says something about training (norms that grow,
clipping that fires on every step); the loss says whether training suffered.
Over the finite recorded losses of a span (at least :data:`MIN_POINTS`):

* ``start`` and ``end`` are the medians of its first and last
  :data:`EDGE_FRACTION` (20%): robust to minibatch noise;
* ``change`` is (end - start) / |start|;
* ``slope`` is the Theil-Sen slope of at most :data:`MAX_BINS` bin medians
  (loss per 1,000 steps) with its 95% upper bound ``slope_high``.

The loss *improves steadily* when it fell by at least :data:`IMPROVING_FRACTION`
(5%, well above the run-to-run noise of a smoothed loss) and the upper bound
of its slope is below 0 (it is still falling, not just lower); it *diverges*
when it rose by :data:`DIVERGING_FRACTION` (10%) or went non-finite after
being finite. A span with fewer points has no trend (``None``): the caller
keeps its gradient-only verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradprobe.analysis.robust import bin_medians, theil_sen

MIN_POINTS = 10
EDGE_FRACTION = 0.2
MAX_BINS = 50
IMPROVING_FRACTION = 0.05
DIVERGING_FRACTION = 0.1


@dataclass(frozen=True)
class LossTrend:
    """The loss over a span of steps: edge medians, relative change, slope per 1,000 steps."""

    start: float
    end: float
    change: float
    slope: float
    slope_high: float
    went_nonfinite: bool

    @property
    def improving(self) -> bool:
        """Fell by :data:`IMPROVING_FRACTION` or more and is still falling."""
        return (not self.went_nonfinite and self.change <= -IMPROVING_FRACTION
                and math.isfinite(self.slope_high) and self.slope_high < 0)

    @property
    def diverging(self) -> bool:
        """Rose by :data:`DIVERGING_FRACTION` or more, or became NaN/Inf."""
        return self.went_nonfinite or self.change >= DIVERGING_FRACTION

    def evidence(self) -> dict[str, float | bool]:
        """The numbers a finding quotes."""
        return {"loss_start": self.start, "loss_end": self.end, "loss_change": self.change,
                "loss_slope_per_1k_steps": self.slope, "loss_improving": self.improving}

    def describe(self) -> str:
        """``the loss fell from 1.43 to 0.25`` (or rose, or went non-finite)."""
        if self.went_nonfinite:
            return f"the loss went from {self.start:.3g} to NaN/Inf"
        verb = "fell" if self.end < self.start else "rose"
        return f"the loss {verb} from {self.start:.3g} to {self.end:.3g}"


def loss_trend(steps: np.ndarray, losses: np.ndarray, first_step: int | None = None) -> LossTrend | None:
    """The trend of ``losses`` (recorded at ``steps``) from ``first_step`` on; ``None`` when too few."""
    steps = np.asarray(steps)
    losses = np.asarray(losses, dtype=np.float64)
    if first_step is not None:
        keep = steps >= first_step
        steps, losses = steps[keep], losses[keep]
    finite = np.isfinite(losses)
    if finite.sum() < MIN_POINTS:
        return None
    went_nonfinite = bool(np.isinf(losses).any() or (~finite[int(np.argmax(finite)):]).any())
    x, y = steps[finite].astype(np.float64), losses[finite]
    k = max(1, math.ceil(len(y) * EDGE_FRACTION))
    start, end = float(np.median(y[:k])), float(np.median(y[-k:]))
    starts, medians = bin_medians(y, MAX_BINS)
    slope, _, high = theil_sen(x[starts], medians)
    change = (end - start) / abs(start) if start else float("nan")
    return LossTrend(start, end, change, slope * 1000, high * 1000, went_nonfinite)


def stream_loss_trend(stream, first_step: int | None = None) -> LossTrend | None:
    """:func:`loss_trend` of a stream's applied (not skipped) steps."""
    steps = stream.steps[~stream.steps["skipped"].to_numpy()]
    return loss_trend(steps["step"].to_numpy(), steps["loss"].to_numpy(dtype=np.float64), first_step)
