"""Spike: isolated steps whose global gradient norm jumps far outside the recent distribution.

On log10 global norms (non-finite, zero and skipped steps left out), each step
is compared with the :data:`WINDOW` steps before it (at least
:data:`MIN_HISTORY`): its robust z-score is (value - rolling median) /
max(1.4826 x rolling MAD, :data:`SIGMA_FLOOR`), the rolling MAD being the
median of the previous steps' absolute deviations from their own rolling
median (the median/MAD form of ZClip's z-score). A step is a spike when:

* z >= :data:`Z_THRESHOLD` and the norm is at least :data:`MIN_RATIO` (3x)
  the rolling median, and
* it is isolated: the median of the (up to) :data:`AFTER` finite steps that
  follow falls back under that 3x line (a lasting rise is an explosion, not a
  spike; a jump straight into NaN/Inf is a non-finite finding).

Severity (one finding per optimizer): ``critical`` when a spike reaches
:data:`CRITICAL_RATIO` (1,000x) its rolling median; ``warning`` from
:data:`WARNING_RATIO` (10x), or when spikes hit at least
:data:`WARNING_FRACTION` (1%) of the steps; ``info`` otherwise. ``layers``
lists the layers that jumped most at the largest spike when that step has
per-layer rows.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gradprobe.analysis.findings import Finding, clip_command, times
from gradprobe.analysis.robust import MAD_TO_SIGMA, log10_norms, nanmedian
from gradprobe.store.streams import Stream

WINDOW = 100
MIN_HISTORY = 20
SIGMA_FLOOR = 0.02
Z_THRESHOLD = 6.0
MIN_RATIO = 3.0
AFTER = 5
WARNING_RATIO = 10.0
CRITICAL_RATIO = 1000.0
WARNING_FRACTION = 0.01
MAX_LISTED_STEPS = 20
MAX_LAYERS = 5


def rolling_center_spread(logs: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Median and 1.4826 x MAD of the previous :data:`WINDOW` values at each position."""
    center = logs.rolling(WINDOW, min_periods=MIN_HISTORY).median().shift(1)
    deviation = (logs - center).abs()
    spread = MAD_TO_SIGMA * deviation.rolling(WINDOW, min_periods=MIN_HISTORY).median().shift(1)
    return center.to_numpy(), spread.to_numpy()


def find_spikes(logs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of isolated spikes in a log10 series, with their z-scores and log10 ratios."""
    center, spread = rolling_center_spread(pd.Series(logs))
    z = (logs - center) / np.maximum(spread, SIGMA_FLOOR)
    excess = logs - center
    line = math.log10(MIN_RATIO)
    padded = pd.Series(np.concatenate([logs, np.full(AFTER, np.nan)]))
    after = padded.rolling(AFTER, min_periods=1).median().shift(-AFTER).to_numpy()[: len(logs)]
    settles = after - center < line
    index = np.flatnonzero((z >= Z_THRESHOLD) & (excess >= line) & settles)
    return index, z[index], excess[index]


def _jumped_layers(stream: Stream, step: int, ratio_line: float) -> list[str]:
    row = np.searchsorted(stream.sampled, step)
    if row >= len(stream.sampled) or stream.sampled[row] != step:
        return []
    logs = log10_norms(stream.matrix("norm"))
    jump = logs[row] - nanmedian(logs, axis=0)
    order = [j for j in np.argsort(-np.nan_to_num(jump, nan=-np.inf)) if jump[j] >= ratio_line]
    return [stream.names[j] for j in order[:MAX_LAYERS]]


def detect(stream: Stream) -> list[Finding]:
    """At most one spike finding for ``stream``."""
    steps = stream.steps
    usable = steps[~steps["skipped"].to_numpy()]
    logs = log10_norms(usable["global_norm"].to_numpy())
    keep = np.isfinite(logs)
    logs, step_numbers = logs[keep], usable["step"].to_numpy()[keep]
    if len(logs) <= MIN_HISTORY:
        return []
    index, z, excess = find_spikes(logs)
    if index.size == 0:
        return []
    worst_at = int(np.argmax(excess))
    ratio = 10 ** float(excess[worst_at])
    fraction = index.size / len(logs)
    if ratio >= CRITICAL_RATIO:
        severity = "critical"
    elif ratio >= WARNING_RATIO or fraction >= WARNING_FRACTION:
        severity = "warning"
    else:
        severity = "info"
    spike_steps = step_numbers[index]
    worst_step = int(spike_steps[worst_at])
    return [
        Finding(
            kind="spike",
            severity=severity,
            layers=_jumped_layers(stream, worst_step, math.log10(MIN_RATIO)),
            steps=(int(spike_steps[0]), int(spike_steps[-1])),
            evidence={
                "optimizer": stream.optimizer,
                "count": int(index.size),
                "fraction": fraction,
                "max_ratio": ratio,
                "max_z": float(np.max(z)),
                "max_step": worst_step,
                "window": WINDOW,
                "z_threshold": Z_THRESHOLD,
                "spike_steps": [int(s) for s in spike_steps[:MAX_LISTED_STEPS]],
            },
            advice=(
                f"{index.size} step(s) jumped far above the recent norms (worst {times(ratio)} at step "
                f"{worst_step}): look for outlier batches or a too-high learning rate; an adaptive clip "
                f"with a skip guard absorbs such steps: {clip_command(stream, 'zclip:z=2.5+skip:sigma=6')}."
            ),
        )
    ]
