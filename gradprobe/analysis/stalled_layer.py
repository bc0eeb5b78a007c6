"""Stalled layers: parameters that receive a gradient but never move (a learning rate of zero).

Over the sampled steps where a layer had a non-zero gradient (at least
:data:`MIN_POINTS`), its recorded parameter norm changing by no more than
:data:`STALL_RELATIVE` (1e-6, below float32 rounding of any real update) of
its level, while its gradient RMS is no more than :data:`GRADIENT_DECADES`
(2) under the median layer's (a vanishing gradient moves a layer too little
to see; that is the vanishing detector's finding) and another layer of the
same optimizer moved by at least :data:`MOVING_RELATIVE` (1e-3), means the optimizer steps but leaves that
layer alone: a parameter group with ``lr=0``, a scheduler that zeroed it, or
a layer meant to be frozen that still computes gradients. One finding per
optimizer, ``warning``.
"""

from __future__ import annotations

import numpy as np

from gradprobe.analysis.findings import Finding
from gradprobe.analysis.robust import nanmedian
from gradprobe.analysis.vanishing import layer_levels
from gradprobe.store.streams import Stream

MIN_POINTS = 5
STALL_RELATIVE = 1e-6
MOVING_RELATIVE = 1e-3
GRADIENT_DECADES = 2.0


def relative_movement(stream: Stream) -> np.ndarray:
    """Per layer: (max - min) / median of its parameter norm over the steps it had a non-zero gradient
    (NaN with fewer than :data:`MIN_POINTS` such steps or no recorded parameter norm)."""
    norms = stream.matrix("norm").astype(np.float64)
    params = stream.matrix("param_norm").astype(np.float64)
    live = stream.present & np.isfinite(norms) & (norms > 0) & np.isfinite(params)
    out = np.full(len(stream.layer_ids), np.nan)
    for j in range(len(out)):
        values = params[live[:, j], j]
        if values.size >= MIN_POINTS and np.median(values) > 0:
            out[j] = (values.max() - values.min()) / np.median(values)
    return out


def detect(stream: Stream) -> list[Finding]:
    """At most one stalled-layer finding for ``stream``."""
    if not len(stream.sampled) or not len(stream.layer_ids):
        return []
    moved = relative_movement(stream)
    known = np.isfinite(moved)
    levels = layer_levels(stream)
    strong = np.isfinite(levels) & (levels >= nanmedian(levels) - GRADIENT_DECADES)
    stalled = known & strong & (moved <= STALL_RELATIVE)
    if not stalled.any() or not (known & (moved >= MOVING_RELATIVE)).any():
        return []
    names = [stream.names[j] for j in np.flatnonzero(stalled)]
    return [Finding(
        kind="stalled_layer",
        severity="warning",
        layers=names,
        steps=(int(stream.sampled[0]), int(stream.sampled[-1])),
        evidence={"optimizer": stream.optimizer, "stalled": len(names),
                  "max_relative_movement": float(np.max(moved[stalled])),
                  "median_relative_movement_others": float(np.median(moved[known & ~stalled]))},
        advice=(f"{', '.join(names[:5])} received gradients but never changed while the other layers trained: "
                "check its parameter group's learning rate (optimizer.param_groups[i]['lr'], or a scheduler "
                "that set it to 0); if it is meant to be frozen, call requires_grad_(False) on it to skip its "
                "gradient."),
    )]
