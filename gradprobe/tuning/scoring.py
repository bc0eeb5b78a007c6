"""Scoring a trial by its recorded loss, and telling real differences from run-to-run noise.

A trial's **score** is its smoothed final loss: the median recorded loss over
the last :data:`FINAL_FRACTION` of its steps (at least :data:`MIN_FINAL_STEPS`;
the median, so that one bad batch at the end does not decide), lower is better. Trials are ranked first by a penalty, then by score:

* ``ok`` (0): finite loss and gradients throughout;
* ``exploding`` (1): the explosion detector found a critical, sustained growth
  of the global gradient norm;
* ``diverged`` (2): the loss, or the gradient of a step that was not skipped,
  became NaN or infinite;
* ``failed`` (3): the script crashed or recorded no loss.

A candidate tried with several seeds is summarised by its worst penalty and
its mean score. Two candidates with the same penalty differ significantly
when Welch's t-test on their scores gives p < :data:`ALPHA`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from gradprobe.analysis import diagnose, split_streams
from gradprobe.analysis.robust import quiet
from gradprobe.store import Run

FINAL_FRACTION = 0.1
MIN_FINAL_STEPS = 5
ALPHA = 0.05
PENALTIES = {"ok": 0, "exploding": 1, "diverged": 2, "failed": 3}


@dataclass
class TrialScore:
    """What one trial's run says: status, score (smoothed final loss), share of steps clipped."""

    status: str
    score: float = math.nan
    steps: int = 0
    clip_fraction: float = 0.0
    error: str | None = None

    @property
    def penalty(self) -> int:
        """Rank class of the status (see the module docstring)."""
        return PENALTIES[self.status]


def score_run(run: Run) -> TrialScore:
    """Score a finished trial's run (its first optimizer's steps)."""
    streams = [s for s in split_streams(run) if not s.steps.empty]
    if not streams:
        return TrialScore("failed", error=run.meta.get("error") or "no steps recorded")
    steps = streams[0].steps
    loss = steps["loss"].to_numpy(dtype=np.float64)
    if np.isnan(loss).all():
        return TrialScore("failed", steps=len(steps), error="no loss recorded (gradprobe records the tensor "
                          "backward() is called on)")
    skipped = steps["skipped"].to_numpy(dtype=bool)
    clipped = (steps["clip_scale"].to_numpy(dtype=np.float64) < 1.0) | skipped
    tail = loss[-max(MIN_FINAL_STEPS, math.ceil(FINAL_FRACTION * len(loss))):]
    score = TrialScore("ok", float(quiet(np.nanmedian, tail)), len(steps), float(clipped.mean()))
    grads = steps["global_norm"].to_numpy(dtype=np.float64)
    if run.meta.get("status") == "crashed":
        score.status, score.error = "failed", run.meta.get("error")
    elif not np.isfinite(loss[~np.isnan(loss)]).all() or not np.isfinite(grads[~skipped]).all():
        score.status = "diverged"
    elif any(f.kind == "explosion" and f.severity == "critical" for f in diagnose(streams)):
        score.status = "exploding"
    return score


@dataclass
class Summary:
    """A candidate's trials over one or more seeds."""

    label: str
    spec: str | None
    scores: list[TrialScore] = field(default_factory=list)

    @property
    def penalty(self) -> int:
        """The worst penalty over the candidate's trials."""
        return max(s.penalty for s in self.scores)

    @property
    def status(self) -> str:
        """The status of the worst trial."""
        return max(self.scores, key=lambda s: s.penalty).status

    @property
    def values(self) -> np.ndarray:
        """The trials' scores."""
        return np.asarray([s.score for s in self.scores], dtype=np.float64)

    @property
    def mean(self) -> float:
        """Mean score (NaN where a trial has none)."""
        return float(self.values.mean())

    @property
    def std(self) -> float:
        """Sample standard deviation of the scores (NaN with one trial)."""
        return float(self.values.std(ddof=1)) if len(self.scores) > 1 else math.nan

    @property
    def clip_fraction(self) -> float:
        """Mean share of steps the policy clipped or skipped."""
        return float(np.mean([s.clip_fraction for s in self.scores]))

    def rank_key(self) -> tuple[int, float]:
        """Sort key: penalty, then mean score (NaN last)."""
        mean = self.mean
        return self.penalty, mean if math.isfinite(mean) else math.inf


def better_than(a: Summary, b: Summary) -> tuple[bool | None, float]:
    """Whether ``a`` is significantly better than ``b``, and the p-value (None: cannot tell,
    fewer than two trials each)."""
    if a.penalty != b.penalty:
        return a.penalty < b.penalty, 0.0
    if len(a.scores) < 2 or len(b.scores) < 2:
        return None, math.nan
    if a.std == 0 and b.std == 0:  # the script ignores the seed: every difference is real
        return a.mean < b.mean, 0.0 if a.mean != b.mean else 1.0
    p = float(quiet(stats.ttest_ind, a.values, b.values, equal_var=False, alternative="less").pvalue)
    return p < ALPHA, p
