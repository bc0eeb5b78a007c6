"""Vanishing gradients: layers far below the rest, attenuation from output to input, decay.

Layers are compared by their gradient RMS (L2 norm / sqrt(numel)), so a big
layer is not mistaken for a strong one; each layer's level is the median of
its log10 RMS over its sampled steps (zero and non-finite values left out;
layers that never had a non-zero gradient are dead layers, not vanishing).
Three signs, one finding per optimizer (severity: the worst that fired):

* **gradient flow**: with the layers in depth order (weights, i.e. parameters
  of 2+ dimensions, when there are at least 3; else every parameter), the
  median level of the output-most third minus that of the input-most third.
  From :data:`ATTENUATION_WARNING` (2 decades, 100x) ``warning``, from
  :data:`ATTENUATION_CRITICAL` (4 decades) ``critical``. Layers at least
  2 decades under the output third are listed.
* **far below the rest**: a layer whose level is :data:`BELOW_REST` (3 decades,
  1,000x) or more under the median of all layers: ``warning`` for a weight,
  ``info`` when only vectors (biases, normalisation scales) are that low
  (a bias followed by normalisation gets almost no gradient).
* **decay**: a layer whose share of the global norm (log10 layer norm - log10
  global norm at the same step) falls by :data:`DECAY_WARNING` (2 decades)
  from the first to the last :data:`EDGE_FRACTION` (20%) of its sampled steps
  (at least :data:`MIN_POINTS`) while its own norm fell too (a layer whose
  share falls only because others explode is not vanishing): ``warning``. Also ``warning`` when the global
  norm itself falls by :data:`GLOBAL_DECAY_WARNING` (3 decades) while the
  recorded loss improved by less than :data:`MIN_LOSS_IMPROVEMENT` (10%):
  gradients died before training converged.
"""

from __future__ import annotations

import math

import numpy as np

from gradprobe.analysis.findings import Finding, sentence, times, worst
from gradprobe.analysis.robust import log10_norms, nanmedian, theil_sen
from gradprobe.store.streams import Stream

ATTENUATION_WARNING = 2.0
ATTENUATION_CRITICAL = 4.0
BELOW_REST = 3.0
DECAY_WARNING = 2.0
GLOBAL_DECAY_WARNING = 3.0
MIN_LOSS_IMPROVEMENT = 0.1
EDGE_FRACTION = 0.2
MIN_POINTS = 20


def _edge_drop(values: np.ndarray) -> np.ndarray:
    """Median of the first minus median of the last :data:`EDGE_FRACTION` of rows (per column)."""
    k = max(1, math.ceil(len(values) * EDGE_FRACTION))
    return nanmedian(values[:k], axis=0) - nanmedian(values[-k:], axis=0)


def layer_levels(stream: Stream) -> np.ndarray:
    """Each layer's median log10 gradient RMS over its sampled steps (NaN: never non-zero)."""
    logs = log10_norms(stream.matrix("norm"))
    return nanmedian(logs, axis=0) - 0.5 * np.log10(np.maximum(stream.numel, 1))


def attenuation(stream: Stream, levels: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Output-third minus input-third median level (decades), the Theil-Sen slope of level on
    depth (decades per layer), and the mask of layers 2+ decades under the output third."""
    live = np.isfinite(levels)
    weights = live & ~stream.is_vector
    chosen = np.flatnonzero(weights if weights.sum() >= 3 else live)
    if chosen.size < 3:
        return float("nan"), float("nan"), np.zeros(len(levels), bool)
    third = max(1, chosen.size // 3)
    inputs, outputs = levels[chosen[:third]], levels[chosen[-third:]]
    drop = float(np.median(outputs) - np.median(inputs))
    slope, _, _ = theil_sen(np.arange(chosen.size, dtype=np.float64), levels[chosen])
    weak = np.zeros(len(levels), bool)
    weak[chosen] = levels[chosen] <= np.median(outputs) - ATTENUATION_WARNING
    return drop, slope, weak


def _global_decay(stream: Stream) -> tuple[float, float]:
    """Fall of the log10 global norm from the first to the last fifth, and the loss improvement."""
    steps = stream.steps
    if len(steps) < MIN_POINTS:
        return float("nan"), float("nan")
    drop = float(_edge_drop(log10_norms(steps["global_norm"].to_numpy())[:, None])[0])
    loss = steps["loss"].to_numpy(dtype=np.float64)
    loss = loss[np.isfinite(loss)]
    if loss.size < MIN_POINTS:
        return drop, float("nan")
    k = max(1, math.ceil(loss.size * EDGE_FRACTION))
    start, end = float(np.median(loss[:k])), float(np.median(loss[-k:]))
    return drop, (start - end) / abs(start) if start else float("nan")


def _layer_signs(stream: Stream, evidence: dict, severities: list[str], notes: list[str]) -> np.ndarray:
    """Gradient flow, far-below-the-rest and decay checks; returns the mask of flagged layers."""
    levels = layer_levels(stream)
    live = np.isfinite(levels)
    flagged = np.zeros(len(levels), bool)

    drop, slope, weak = attenuation(stream, levels)
    if math.isfinite(drop):
        evidence.update(attenuation_decades=drop, depth_slope_decades_per_layer=slope)
        if drop >= ATTENUATION_WARNING:
            severities.append("critical" if drop >= ATTENUATION_CRITICAL else "warning")
            flagged |= weak
            notes.append(f"gradients shrink {times(10 ** drop)} from the output layers to the input layers")

    if live.sum() >= 2:
        below = float(np.median(levels[live])) - levels
        low = live & (below >= BELOW_REST)
        evidence["max_below_rest_decades"] = float(np.nanmax(below))
        if low.any():
            severities.append("warning" if (low & ~stream.is_vector).any() else "info")
            flagged |= low
            notes.append(f"{int(low.sum())} layer(s) sit {BELOW_REST:g}+ decades under the median layer")

    if len(stream.sampled) >= MIN_POINTS:
        at_sampled = stream.steps.set_index("step")["global_norm"].reindex(stream.sampled).to_numpy()
        share = log10_norms(stream.matrix("norm")) - log10_norms(at_sampled)[:, None]
        decay = _edge_drop(share)
        own_drop = _edge_drop(log10_norms(stream.matrix("norm")))
        decaying = live & (decay >= DECAY_WARNING) & (own_drop > 0)
        evidence["max_decay_decades"] = float(np.nanmax(decay)) if np.isfinite(decay).any() else None
        if decaying.any():
            severities.append("warning")
            flagged |= decaying
            notes.append(f"{int(decaying.sum())} layer(s) lost {DECAY_WARNING:g}+ decades of their share "
                         "of the gradient over the run")
    return flagged


def detect(stream: Stream) -> list[Finding]:
    """At most one vanishing finding for ``stream``."""
    severities: list[str] = []
    notes: list[str] = []
    evidence: dict = {"optimizer": stream.optimizer}
    flagged = np.zeros(len(stream.layer_ids), bool)
    if len(stream.sampled) and len(stream.layer_ids):
        flagged = _layer_signs(stream, evidence, severities, notes)

    global_drop, improvement = _global_decay(stream)
    if math.isfinite(global_drop):
        evidence["global_decay_decades"] = global_drop
        evidence["loss_improvement"] = improvement
        if global_drop >= GLOBAL_DECAY_WARNING and math.isfinite(improvement) and improvement < MIN_LOSS_IMPROVEMENT:
            severities.append("warning")
            notes.append(f"the global norm fell {times(10 ** global_drop)} while the loss barely improved")

    if not severities:
        return []
    return [
        Finding(
            kind="vanishing",
            severity=worst(severities),
            layers=[stream.names[j] for j in np.flatnonzero(flagged)],
            steps=(stream.first_step, stream.last_step),
            evidence=evidence,
            advice=sentence("; ".join(notes)) + ": use residual connections or normalisation, "
                   "ReLU-family activations and a variance-preserving initialisation (He/Xavier), "
                   "or raise the learning rate of the starved layers.",
        )
    ]
