"""Checks run on each flush while training goes on: non-finite gradients and spikes, as soon as seen.

They read the host arrays of a flushed ``steps`` table (never the gradients)
and keep, per optimizer, only the recent history a check needs. A spike is
judged as :mod:`gradprobe.analysis.spike` judges it (robust z-score against
the previous :data:`~gradprobe.analysis.spike.WINDOW` steps, z >= 6 and >= 3x
the rolling median, skipped and non-finite steps left out) except that it is
reported at once, without waiting to see whether the norm falls back: the
report afterwards tells an isolated spike from the start of an explosion.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd

from gradprobe.analysis.findings import Finding, times
from gradprobe.analysis.robust import log10_norms
from gradprobe.analysis.spike import (CRITICAL_RATIO, MIN_RATIO, SIGMA_FLOOR, WARNING_RATIO, WINDOW, Z_THRESHOLD,
                                      rolling_center_spread)

# The rolling MAD at a step uses the deviations of the WINDOW steps before it, each from its own
# rolling median over the WINDOW steps before that: 2 x WINDOW steps of history reproduce it exactly.
HISTORY = 2 * WINDOW


class LiveChecks:
    """Feed it every flushed ``steps`` table; it returns the findings each flush reveals."""

    def __init__(self) -> None:
        self._logs: dict[int, np.ndarray] = {}

    def feed(self, steps: Mapping[str, np.ndarray]) -> list[Finding]:
        """Findings in one flush's ``steps`` columns (``step``, ``optimizer``, ``global_norm``, ``skipped``):
        per optimizer, the non-finite steps and the largest spike, in that order."""
        found = []
        optimizers = np.asarray(steps["optimizer"])
        for optimizer in np.unique(optimizers):
            mine = optimizers == optimizer
            step = np.asarray(steps["step"])[mine]
            norm = np.asarray(steps["global_norm"], dtype=np.float64)[mine]
            skipped = np.asarray(steps["skipped"], dtype=bool)[mine]
            found += self._nonfinite(int(optimizer), step, norm, skipped)
            found += self._spike(int(optimizer), step[~skipped], norm[~skipped])
        return found

    @staticmethod
    def _nonfinite(optimizer: int, step: np.ndarray, norm: np.ndarray, skipped: np.ndarray) -> list[Finding]:
        bad = ~np.isfinite(norm)
        if not bad.any():
            return []
        applied = bad & ~skipped
        first = int(step[bad][0])
        return [Finding(
            kind="nonfinite", severity="critical" if applied.any() else "info", layers=[],
            steps=(first, int(step[bad][-1])),
            evidence={"optimizer": optimizer, "steps": int(bad.sum()), "applied": int(applied.sum())},
            advice=(f"NaN/Inf gradient norm at step {first} ({int(bad.sum())} step(s) in this flush, "
                    f"{int(applied.sum())} applied to the weights)."),
        )]

    def _spike(self, optimizer: int, step: np.ndarray, norm: np.ndarray) -> list[Finding]:
        logs = log10_norms(norm)
        keep = np.isfinite(logs)
        new, step = logs[keep], step[keep]
        history = self._logs.get(optimizer, np.zeros(0))
        series = np.concatenate([history, new])
        self._logs[optimizer] = series[-HISTORY:]
        if new.size == 0:
            return []
        center, spread = rolling_center_spread(pd.Series(series))
        center, spread = center[len(history):], spread[len(history):]
        excess = new - center
        z = excess / np.maximum(spread, SIGMA_FLOOR)
        hits = np.flatnonzero((z >= Z_THRESHOLD) & (excess >= math.log10(MIN_RATIO)))
        if hits.size == 0:
            return []
        worst = hits[np.argmax(excess[hits])]
        ratio = 10 ** float(excess[worst])
        severity = "critical" if ratio >= CRITICAL_RATIO else "warning" if ratio >= WARNING_RATIO else "info"
        return [Finding(
            kind="spike", severity=severity, layers=[], steps=(int(step[hits[0]]), int(step[hits[-1]])),
            evidence={"optimizer": optimizer, "count": int(hits.size), "max_ratio": ratio,
                      "max_z": float(z[worst]), "max_step": int(step[worst])},
            advice=(f"global norm {10 ** float(new[worst]):.4g} at step {int(step[worst])}, {times(ratio)} the "
                    f"median of the previous steps ({int(hits.size)} such step(s) in this flush)."),
        )]
