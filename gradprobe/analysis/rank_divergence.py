"""Ranks that disagree: data-parallel replicas whose gradients differ after the all-reduce.

Data-parallel ranks step with the same reduced gradient, so the global norms
that every rank recorded (``--all-ranks``) agree to rounding. A step
*diverges* when a rank's pre-clip global norm differs from the lowest rank's
by more than :data:`RELATIVE_TOLERANCE` (0.1%) of the larger of the two: the
model is not wrapped for data parallelism, a gradient is changed on one rank
after the reduction, or parameters are left out of it. ``warning`` when some
compared steps diverge, ``critical`` when :data:`CRITICAL_FRACTION` (half) or
more do: the replicas train different models. ``layers``: those whose norms
differ at the first diverging step with per-layer statistics.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gradprobe.analysis.findings import Finding
from gradprobe.store.streams import Stream

RELATIVE_TOLERANCE = 1e-3
CRITICAL_FRACTION = 0.5


def _relative(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| relative to the larger magnitude; 0 where both agree (NaN and NaN too), inf where one is NaN."""
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), np.finfo(np.float32).tiny)
    with np.errstate(invalid="ignore"):
        difference = np.abs(a - b) / scale
    agree = (a == b) | (np.isnan(a) & np.isnan(b))
    return np.where(agree, 0.0, np.where(np.isnan(difference), np.inf, difference))


def _layers(rows: pd.DataFrame, step: int, reference: int) -> list[str]:
    """The layers whose norms differ between ranks at ``step``."""
    rows = rows[rows["step"] == step]
    norms = rows.pivot_table(index="name", columns="rank", values="norm", aggfunc="first", observed=True)
    if reference not in norms.columns or norms.shape[1] < 2:
        return []
    others = norms.drop(columns=reference).to_numpy(dtype=np.float64)
    bad = (_relative(others, norms[reference].to_numpy(dtype=np.float64)[:, None]) > RELATIVE_TOLERANCE).any(axis=1)
    return [str(name) for name in norms.index[bad]]


def detect(stream: Stream) -> list[Finding]:
    """At most one finding: the ranks of ``stream`` recorded different global norms (needs ``--all-ranks``)."""
    if stream.all_ranks is None:
        return []
    steps, rows = stream.all_ranks
    steps = steps.drop_duplicates(["step", "rank"], keep="last")
    norms = steps.pivot(index="step", columns="rank", values="global_norm")  # NaN: not recorded, or NaN norm
    shared = steps.groupby("step")["rank"].nunique()
    norms = norms[shared.reindex(norms.index).to_numpy() > 1]  # steps that at least two ranks recorded
    if norms.empty:
        return []
    reference = int(norms.columns.min())
    others = norms.drop(columns=reference).to_numpy(dtype=np.float64)
    differences = _relative(others, norms[reference].to_numpy(dtype=np.float64)[:, None])
    diverging = (differences > RELATIVE_TOLERANCE).any(axis=1)
    if not diverging.any():
        return []
    bad_steps = norms.index.to_numpy()[diverging]
    fraction = float(diverging.mean())
    sampled = np.intersect1d(bad_steps, rows["step"].unique())
    worst = float(differences.max())
    return [
        Finding(
            kind="rank_divergence",
            severity="critical" if fraction >= CRITICAL_FRACTION else "warning",
            layers=_layers(rows, int(sampled[0]), reference) if sampled.size else [],
            steps=(int(bad_steps[0]), int(bad_steps[-1])),
            evidence={
                "optimizer": stream.optimizer,
                "ranks": int(norms.shape[1]),
                "compared_steps": int(len(norms)),
                "diverging_steps": int(diverging.sum()),
                "fraction": fraction,
                "max_relative_difference": worst,
            },
            advice=f"Ranks recorded different gradients at {int(diverging.sum())} of {len(norms)} steps "
                   f"(up to {worst:.1%} apart): data-parallel replicas should step with the same reduced "
                   "gradient. Wrap the model in DistributedDataParallel (or FSDP) and do not change gradients "
                   "on one rank after the reduction.",
        )
    ]
