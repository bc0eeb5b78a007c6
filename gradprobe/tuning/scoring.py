"""Scoring a trial by its recorded loss, and telling real differences from run-to-run noise.

A trial's **score** is its smoothed final loss: the median recorded loss over
the last :data:`FINAL_FRACTION` of its steps (at least :data:`MIN_FINAL_STEPS`;
the median, so that one bad batch at the end does not decide), lower is better;
or, with ``--metric``, the last value of a held-out metric the script prints
(lower or, with ``--maximize``, higher is better). Trials are ranked first by a penalty, then by score:

* ``ok`` (0): finite loss and gradients throughout;
* ``exploding`` (1): the explosion detector found a critical, sustained growth
  of the global gradient norm;
* ``diverged`` (2): the loss, or the gradient of a step that was not skipped,
  became NaN or infinite;
* ``failed`` (3): the script crashed or recorded no loss.

A candidate tried with several seeds is summarised by its worst penalty and
its mean score. Two candidates with the same penalty differ significantly
when Welch's t-test on their scores gives p < :data:`ALPHA`. Repeats that
score exactly the same give no noise estimate, so no difference between two
such candidates is called significant.
"""

from __future__ import annotations

import math
import re
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


def metric_value(text: str, pattern: re.Pattern[str]) -> float | None:
    """The last value ``pattern`` matches in ``text`` (its first group, else the whole match), or None."""
    value = None
    for match in pattern.finditer(text):
        try:
            value = float(match.group(1) if pattern.groups else match.group(0))
        except ValueError:
            continue
    return value


def score_run(run: Run, metric: float | None = None) -> TrialScore:
    """Score a finished trial's run (its first optimizer's steps); ``metric``, the value the script
    printed for ``--metric``, replaces the smoothed final loss as the score."""
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
    value = float(quiet(np.nanmedian, tail)) if metric is None else metric
    score = TrialScore("ok", value, len(steps), float(clipped.mean()))
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
    higher_is_better: bool = False

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
    def identical(self) -> bool:
        """Whether several trials with different seeds scored exactly the same."""
        return len(self.scores) > 1 and bool(np.all(self.values == self.values[0]))

    @property
    def clip_fraction(self) -> float:
        """Mean share of steps the policy clipped or skipped."""
        return float(np.mean([s.clip_fraction for s in self.scores]))

    def rank_key(self) -> tuple[int, float]:
        """Sort key: penalty, then mean score, best first (NaN last)."""
        mean = -self.mean if self.higher_is_better else self.mean
        return self.penalty, mean if math.isfinite(mean) else math.inf


def better_than(a: Summary, b: Summary) -> tuple[bool | None, float]:
    """Whether ``a`` is significantly better than ``b``, and Welch's p-value (NaN where no test ran).

    A worse penalty decides without a test. None (cannot tell): fewer than two
    trials each, or both candidates' repeats identical, so that the noise is
    unknown rather than zero."""
    if a.penalty != b.penalty:
        return a.penalty < b.penalty, math.nan
    if len(a.scores) < 2 or len(b.scores) < 2 or (a.identical and b.identical):
        return None, math.nan
    direction = "greater" if a.higher_is_better else "less"
    p = float(quiet(stats.ttest_ind, a.values, b.values, equal_var=False, alternative=direction).pvalue)
    return p < ALPHA, p
