"""Imbalance between layer groups: one group's gradients orders of magnitude above another's.

Groups are the recorded ones (top-level modules, or the model labels given to
``gradprobe.watch``) unless user groups (``--group NAME=GLOB``) are given. At
each sampled step a group's level is its gradient RMS: sqrt(sum of its
layers' squared norms / its parameter count), so that a group is not called
strong for being big. The strongest group (highest median log10 RMS) is
compared with each other group of the same optimizer:

* the gap is *sustained* when it is :data:`GAP_DECADES` (2 decades, 100x)
  or more on at least :data:`SUSTAINED_FRACTION` (20%) of the sampled steps:
  ``warning``; ``critical`` when the median gap reaches
  :data:`CRITICAL_DECADES` (4 decades);
* ``steps`` spans the first to the last sampled step with such a gap.

One finding per optimizer, for the most dominated group (the others that
qualify are named in the advice and counted in ``groups_dominated``);
``layers`` are that group's layers; evidence includes the two groups' median
RMS as ``rms:<group>``. The advice's layer-norm clip is at the
:data:`LAYER_CLIP_PERCENTILE` (95th) percentile of the weak group's layer
norms: the strong group's layers are brought down to the level the weak
group's layers reach, which leaves the weak group unclipped.
"""

from __future__ import annotations

import numpy as np

from gradprobe.analysis.findings import Finding, clip_command, round3, times
from gradprobe.analysis.groups import assign_groups
from gradprobe.analysis.robust import log10_norms, nanmedian
from gradprobe.store.streams import Stream

GAP_DECADES = 2.0
SUSTAINED_FRACTION = 0.2
CRITICAL_DECADES = 4.0
LAYER_CLIP_PERCENTILE = 95.0


def group_levels(stream: Stream, labels: list[str | None]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Group names (first-seen order) with their log10 RMS and log10 L2 norm per sampled step."""
    names = list(dict.fromkeys(label for label in labels if label is not None))
    squares = np.square(stream.matrix("norm").astype(np.float64))
    present = stream.present
    rms = np.full((len(stream.sampled), len(names)), np.nan)
    norm = np.full_like(rms, np.nan)
    for k, group in enumerate(names):
        members = np.asarray([label == group for label in labels])
        total = np.nansum(squares[:, members], axis=1)
        seen = present[:, members].any(axis=1)
        norm[:, k] = np.where(seen, np.sqrt(total), np.nan)
        rms[:, k] = norm[:, k] / np.sqrt(max(stream.numel[members].sum(), 1))
    return names, log10_norms(rms), log10_norms(norm)


def detect(stream: Stream, user_groups: dict[str, list[str]] | None = None) -> list[Finding]:
    """At most one imbalance finding for ``stream``: the group the strongest one dominates most."""
    if not len(stream.sampled):
        return []
    labels = assign_groups(stream.names, list(stream.table["group"]), user_groups)
    names, rms, norm = group_levels(stream, labels)
    if len(names) < 2:
        return []
    levels = nanmedian(rms, axis=0)
    if not np.isfinite(levels).any():
        return []
    strong = int(np.nanargmax(levels))
    gaps = {}
    for weak in range(len(names)):
        gap = rms[:, strong] - rms[:, weak]
        known = np.isfinite(gap)
        if weak != strong and known.any() and np.mean(gap[known] >= GAP_DECADES) >= SUSTAINED_FRACTION:
            gaps[weak] = gap
    if not gaps:
        return []
    weak = max(gaps, key=lambda k: nanmedian(gaps[k]))
    gap = gaps[weak]
    known = np.isfinite(gap)
    wide = known & (gap >= GAP_DECADES)
    fraction = float(wide.sum() / known.sum())
    median_gap = float(np.median(gap[known]))
    rows = np.flatnonzero(wide)
    ratio = 10**median_gap
    members = np.asarray([label == names[weak] for label in labels])
    weak_norms = stream.pre_clip_matrix("norm")[:, members]
    spec = f"layer-norm:max={round3(np.nanpercentile(weak_norms, LAYER_CLIP_PERCENTILE))}"
    others = [names[k] for k in gaps if k != weak]
    also = f" (also dominated: {', '.join(repr(o) for o in others)})" if others else ""
    return [Finding(
        kind="imbalance",
        severity="critical" if median_gap >= CRITICAL_DECADES else "warning",
        layers=[stream.names[j] for j, label in enumerate(labels) if label == names[weak]],
        steps=(int(stream.sampled[rows[0]]), int(stream.sampled[rows[-1]])),
        evidence={
            "optimizer": stream.optimizer,
            "ratio_median": ratio,
            "ratio_max": float(10 ** np.max(gap[known])),
            "fraction": fraction,
            "norm_ratio_median": float(10 ** nanmedian(norm[:, strong] - norm[:, weak])),
            "groups_dominated": len(gaps),
            f"rms:{names[strong]}": float(10 ** levels[strong]),
            f"rms:{names[weak]}": float(10 ** levels[weak]),
        },
        advice=(
            f"Group '{names[strong]}' gets {times(ratio)} the per-parameter gradient of '{names[weak]}'{also} "
            f"on {fraction:.0%} of the sampled steps, from step {stream.sampled[rows[0]]} to "
            f"{stream.sampled[rows[-1]]}: rebalance the loss weights or per-group learning rates "
            "(or normalise each group's inputs, as unscaled features of one input do this); layer-wise clipping at "
            f"the weak group's level keeps one group from drowning the other: {clip_command(stream, spec)}."
        ),
    )]
