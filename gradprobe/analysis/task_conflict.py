"""Conflicting and dominating tasks on shared parameters, from the run's ``tasks`` table.

The table exists when the script called ``gradprobe.task_gradients``: per
sampled step, each task's gradient norm on the shared parameters and the
cosine similarity of each pair of tasks. With at least :data:`MIN_SAMPLES`
samples:

* **task_conflict**, per pair: a step *conflicts* when the cosine is
  :data:`CONFLICT_COSINE` (-0.1) or lower (near-orthogonal gradients do not
  count). ``warning`` when :data:`CONFLICT_FRACTION` (30%) or more of the
  samples conflict; ``critical`` when the median cosine is also
  :data:`CRITICAL_COSINE` (-0.5) or lower. ``steps``: first to last conflicting
  sample.
* **task_imbalance**: the task with the largest median norm against the one
  with the smallest; a sample is *dominated* when the ratio of their norms is
  :data:`DOMINANCE_RATIO` (10x) or more. ``warning`` when
  :data:`DOMINANCE_FRACTION` (50%) or more of the samples are; ``critical``
  when the median ratio reaches :data:`CRITICAL_RATIO` (1,000x). ``steps``:
  first to last dominated sample.

``layers`` is empty (the tasks share the whole trunk); the task names are in
the advice and in the evidence keys (``norm:<task>``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gradprobe.analysis.findings import Finding, times
from gradprobe.store import Run
from gradprobe.store.reader import read_table

MIN_SAMPLES = 5
CONFLICT_COSINE = -0.1
CONFLICT_FRACTION = 0.3
CRITICAL_COSINE = -0.5
DOMINANCE_RATIO = 10.0
DOMINANCE_FRACTION = 0.5
CRITICAL_RATIO = 1000.0


def read_tasks(run: Run) -> pd.DataFrame:
    """The run's ``tasks`` table (empty when the script measured no task gradients), lowest rank only."""
    frame = read_table(run.path, "tasks")
    if len(frame) and frame["rank"].nunique() > 1:
        frame = frame[frame["rank"] == frame["rank"].min()]
    return frame.reset_index(drop=True)


def task_norms(tasks: pd.DataFrame) -> pd.DataFrame:
    """Sampled steps x tasks: each task's gradient norm on the shared parameters."""
    rows = tasks[tasks["other"] == ""]
    return rows.pivot_table(index="step", columns="task", values="norm", aggfunc="last", sort=False)


def task_cosines(tasks: pd.DataFrame) -> pd.DataFrame:
    """Sampled steps x task pairs (``"a/b"``): the cosine similarity of the two tasks' gradients."""
    rows = tasks[tasks["other"] != ""]
    pairs = rows["task"].astype(str) + "/" + rows["other"].astype(str)
    return rows.assign(pair=pairs).pivot_table(index="step", columns="pair", values="cosine", aggfunc="last",
                                               sort=False)


def _conflicts(cosines: pd.DataFrame, optimizer: int) -> list[Finding]:
    findings = []
    for pair in cosines.columns:
        series = cosines[pair].dropna()
        if len(series) < MIN_SAMPLES:
            continue
        values = series.to_numpy(dtype=np.float64)
        conflict = values <= CONFLICT_COSINE
        fraction = float(conflict.mean())
        if fraction < CONFLICT_FRACTION:
            continue
        median = float(np.median(values))
        steps = series.index.to_numpy()[conflict]
        a, b = pair.split("/", 1)
        findings.append(Finding(
            kind="task_conflict",
            severity="critical" if median <= CRITICAL_COSINE else "warning",
            layers=[],
            steps=(int(steps[0]), int(steps[-1])),
            evidence={"optimizer": optimizer, "samples": len(values), "conflict_fraction": fraction,
                      "cosine_median": median, "cosine_min": float(values.min())},
            advice=(f"Tasks '{a}' and '{b}' pull the shared parameters in opposite directions (cosine "
                    f"<= {CONFLICT_COSINE} on {fraction:.0%} of the sampled steps, median {median:.2f}): project "
                    "out the conflicting component (gradient surgery, as PCGrad does), or share fewer layers."),
        ))
    return findings


def _dominance(norms: pd.DataFrame, optimizer: int) -> list[Finding]:
    norms = norms.dropna(how="all")
    if norms.shape[1] < 2 or len(norms) < MIN_SAMPLES:
        return []
    medians = norms.median()
    if not np.isfinite(medians.to_numpy(dtype=np.float64)).all() or medians.max() <= 0:
        return []
    strong, weak = medians.idxmax(), medians.idxmin()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (norms[strong] / norms[weak]).to_numpy(dtype=np.float64)
    known = ~np.isnan(ratio)
    if known.sum() < MIN_SAMPLES:
        return []
    dominated = known & (ratio >= DOMINANCE_RATIO)
    fraction = float(dominated.sum() / known.sum())
    if fraction < DOMINANCE_FRACTION:
        return []
    median = float(np.median(ratio[known]))
    steps = norms.index.to_numpy()[dominated]
    return [Finding(
        kind="task_imbalance",
        severity="critical" if median >= CRITICAL_RATIO else "warning",
        layers=[],
        steps=(int(steps[0]), int(steps[-1])),
        evidence={"optimizer": optimizer, "samples": int(known.sum()), "ratio_median": median,
                  "ratio_max": float(np.max(ratio[known])), "fraction": fraction,
                  f"norm:{strong}": float(medians[strong]), f"norm:{weak}": float(medians[weak])},
        advice=(f"Task '{strong}' gets {times(median)} the gradient of task '{weak}' on the shared parameters "
                f"(on {fraction:.0%} of the sampled steps), so '{weak}' barely trains them: weight the losses "
                "so the gradient norms match (as GradNorm does) or normalise the losses' scales."),
    )]


def detect(tasks: pd.DataFrame) -> list[Finding]:
    """Conflict findings (one per pair of tasks) and at most one imbalance finding."""
    if tasks is None or not len(tasks):
        return []
    optimizer = int(tasks["optimizer"].iloc[0])
    return _conflicts(task_cosines(tasks), optimizer) + _dominance(task_norms(tasks), optimizer)
