"""The clip spec to bet on first, read from where the run's trouble began.

A percentile of an unclipped history is a poor threshold once that history
holds the damage: after a bad batch the norms stay high while the model
recovers, and the percentile follows them up. This module looks for the
first step where the trouble started and reads the threshold from the
healthy stretch before it:

* **trouble**: the first step whose pre-clip global norm is at least
  :data:`JUMP` (10x) the median of the steps before it (the spike detector's
  rolling window), or the first step of a spike, explosion, non-finite or
  failed-to-learn finding, whichever comes first;
* **no trouble** (a healthy run): clipping has nothing to fix, and the spec
  is a guard at :data:`GUARD` (2x) the largest recorded norm, which never
  fires on this run and only stops a future blow-up;
* **trouble after at least** :data:`MIN_HEALTHY` **healthy steps**: a fixed
  ``global-norm:max`` at the :data:`HEALTHY_PERCENTILE` (10th) percentile of
  the healthy norms: AutoClip's percentile (Seetharaman et al., 2020), read
  on the healthy part and frozen there, so it does not follow the damage up
  the way the adaptive AutoClip does;
* **trouble from the start** (fewer healthy steps): no healthy history to
  read, so the common default :data:`FALLBACK` (1.0); Pascanu et al. (2013)
  found training insensitive to the threshold and well behaved even with
  small ones. ``gradprobe tune`` measures it.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from gradprobe.analysis.findings import Finding
from gradprobe.analysis.robust import log10_norms
from gradprobe.analysis.spike import rolling_center_spread
from gradprobe.policies.history import percentile, spec_number
from gradprobe.store.streams import Stream

JUMP = 10.0
GUARD = 2.0
MIN_HEALTHY = 20
HEALTHY_PERCENTILE = 10.0
FALLBACK = 1.0
TROUBLE_KINDS = ("spike", "explosion", "nonfinite", "failed_to_learn")
STRATEGY = "first-choice"


def first_jump(steps: np.ndarray, norms: np.ndarray) -> int | None:
    """The first step whose norm is at least :data:`JUMP` times the rolling median before it."""
    logs = log10_norms(norms)
    keep = np.isfinite(logs)
    center, _ = rolling_center_spread(pd.Series(logs[keep]))
    jumped = np.flatnonzero(logs[keep] - center >= math.log10(JUMP))
    return int(steps[keep][jumped[0]]) if jumped.size else None


def trouble_start(stream: Stream, findings: Sequence[Finding]) -> tuple[int | None, str]:
    """The first troubled step of ``stream`` (None: a healthy run) and what marks it."""
    steps = stream.steps[~stream.steps["skipped"].to_numpy()]
    marks = []
    jump = first_jump(steps["step"].to_numpy(), steps["global_norm"].to_numpy(dtype=np.float64))
    if jump is not None:
        marks.append((jump, f"the norm jumped {JUMP:g}x above its recent median at step {jump}"))
    for f in findings:
        if f.kind in TROUBLE_KINDS and f.evidence.get("optimizer") == stream.optimizer:
            marks.append((f.steps[0], f"{f.kind} from step {f.steps[0]}"))
    return min(marks) if marks else (None, "")


def first_choice(stream: Stream, findings: Sequence[Finding]) -> tuple[str, str] | None:
    """The spec to try first for ``stream`` and its reason in one sentence (None: no finite norm above
    zero, as when the script's clip saw no parameters, so there is no history to read a threshold from)."""
    steps = stream.steps[~stream.steps["skipped"].to_numpy()]
    norms = steps["global_norm"].to_numpy(dtype=np.float64)
    usable = np.isfinite(norms) & (norms > 0)
    if not usable.any():
        return None
    start, mark = trouble_start(stream, findings)
    if start is None:
        cap = GUARD * float(norms[usable].max())
        return (f"global-norm:max={spec_number(cap)}",
                f"No spike, jump or explosion in {int(usable.sum())} steps: clipping has nothing to fix here; "
                f"this guard at {GUARD:g}x the largest norm never fires on this run and only stops a future blow-up.")
    healthy = norms[usable & (steps["step"].to_numpy() < start)]
    if healthy.size < MIN_HEALTHY:
        return (f"global-norm:max={spec_number(FALLBACK)}",
                f"Trouble from the start ({mark}, {healthy.size} healthy steps before it): no healthy history to "
                f"read a threshold from, so the common default of {FALLBACK:g}; confirm it with gradprobe tune.")
    cap = percentile(healthy, HEALTHY_PERCENTILE)
    return (f"global-norm:max={spec_number(cap)}",
            f"{HEALTHY_PERCENTILE:g}th percentile of the {healthy.size} healthy norms before the trouble ({mark}), "
            "frozen there: every step above the level of healthy training is brought back to it, where a "
            "percentile of the whole run would follow the damage up.")
