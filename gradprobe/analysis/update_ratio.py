"""Update-to-weight ratio: how far each optimizer step moves each layer, relative to its size.

On sampled steps the recorder measures the update the optimizer applied
(parameter after minus before); divided by the parameter's norm it is the
layer's effective step size. The usual rule of thumb is about
:data:`RULE_OF_THUMB` (1e-3) per step. Skipped steps are left out. Findings:

* ``update_ratio`` (warning): a weight matrix (2+ dimensions) whose median
  ratio exceeds :data:`HIGH_RATIO` (30x the rule of thumb): its learning rate
  is far too high for it. As for explosion, the loss is the evidence of harm:
  while it improves steadily over the sampled span
  (:mod:`gradprobe.analysis.loss_trend`) the finding is ``info``: recipes
  such as the word-language-model LSTM (SGD at lr 20, clipped at 0.25) take
  such steps on purpose. Beside an explosion, NaN or vanishing finding of the
  same optimizer, which explains the loss, it is ``info`` too
  (:func:`gradprobe.analysis.diagnose.one_finding_per_cause`).
* ``frozen_layer`` (warning): a layer that had a non-zero gradient at every
  sampled step, yet whose median ratio is below :data:`ZERO_RATIO` (1e-9,
  float32 rounding of an unchanged tensor is exactly 0): its parameter group's
  learning rate is 0 or it is frozen by accident.
* ``decay_only`` (info): a layer whose gradient was exactly zero at every
  sampled step but that still moved: only weight decay updates it.
* ``update_spike`` (warning): sampled steps whose total update norm (all
  layers, relative to what the measured layers usually move) jumps far above the recent ones, by the spike detector's rule
  (:func:`gradprobe.analysis.spike.find_spikes`, on sampled steps); the
  evidence says which of them were also gradient-norm spikes. Under Adam the
  update is normalised, so a spike here is the optimizer moving, not only the
  gradient: such spikes often precede loss spikes.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gradprobe.analysis.findings import Finding, times
from gradprobe.analysis.loss_trend import stream_loss_trend
from gradprobe.analysis.robust import log10_norms, nanmedian, quiet
from gradprobe.analysis.spike import MIN_HISTORY, MIN_RATIO, find_spikes, rolling_center_spread
from gradprobe.store.streams import Stream

RULE_OF_THUMB = 1e-3
HIGH_RATIO = 3e-2
ZERO_RATIO = 1e-9
MAX_LISTED_STEPS = 20
MAX_LAYERS = 5


def ratios(stream: Stream) -> np.ndarray | None:
    """Update-to-weight ratio per sampled step and layer (NaN where not measured or skipped);
    None when the run measured no update."""
    if "update_norm" not in stream.rows or not np.isfinite(stream.rows["update_norm"].to_numpy()).any():
        return None
    update = stream.matrix("update_norm").astype(np.float64)
    weight = stream.matrix("param_norm").astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(weight > 0, update / weight, np.nan)
    skipped = set(stream.steps["step"][stream.steps["skipped"].to_numpy()].tolist())
    out[[step in skipped for step in stream.sampled]] = np.nan
    return out


def detect(stream: Stream) -> list[Finding]:
    """Findings about the size of the applied updates of ``stream`` (none without measured updates)."""
    grid = ratios(stream)
    if grid is None:
        return []
    measured = np.isfinite(grid)
    findings = []
    median = nanmedian(grid, axis=0)
    grads = stream.matrix("norm").astype(np.float64)
    span = (int(stream.sampled[0]), int(stream.sampled[-1]))
    high = [j for j in range(grid.shape[1]) if not stream.is_vector[j] and median[j] > HIGH_RATIO]
    if high:
        worst = max(high, key=lambda j: median[j])
        trend = stream_loss_trend(stream, span[0])
        unharmed = trend is not None and trend.improving
        moves = (f"each step moves {stream.names[worst]} by {median[worst]:.2g} of its norm (median), "
                 f"{times(median[worst] / RULE_OF_THUMB)} the usual ~1e-3")
        advice = (f"{moves}, while {trend.describe()}: training is not hurt, so nothing needs changing; if the "
                  "loss stalls or spikes, lower its learning rate first." if unharmed else
                  f"{moves}: lower its learning rate (or warm up longer).")
        findings.append(Finding(
            "update_ratio", "info" if unharmed else "warning",
            [stream.names[j] for j in sorted(high, key=lambda j: -median[j])], span,
            {"optimizer": stream.optimizer, "max_median_ratio": float(median[worst]), "rule_of_thumb": RULE_OF_THUMB,
             "threshold": HIGH_RATIO, "layers": len(high), **(trend.evidence() if trend is not None else {})},
            advice))
    moving = np.where(measured, grads, np.nan)
    frozen = [j for j in range(grid.shape[1]) if measured[:, j].any() and median[j] < ZERO_RATIO
              and np.all(moving[measured[:, j], j] > 0)]
    if frozen:
        findings.append(Finding(
            "frozen_layer", "warning", [stream.names[j] for j in frozen], span,
            {"optimizer": stream.optimizer, "layers": len(frozen), "zero_ratio": ZERO_RATIO},
            "these layers receive gradients but the optimizer never moves them: a parameter group with "
            "learning rate 0, or parameters frozen by accident (set requires_grad=False to freeze on purpose)."))
    decay = [j for j in range(grid.shape[1]) if measured[:, j].any() and np.all(moving[measured[:, j], j] == 0)
             and median[j] > ZERO_RATIO]
    if decay:
        findings.append(Finding(
            "decay_only", "info", [stream.names[j] for j in decay], span,
            {"optimizer": stream.optimizer, "layers": len(decay),
             "max_median_ratio": float(max(median[j] for j in decay))},
            "these layers get a zero gradient, yet move: only weight decay updates them, shrinking them "
            "towards 0; check that they take part in the loss."))
    findings.extend(_update_spikes(stream))
    return findings


def _total_update(stream: Stream) -> np.ndarray:
    """The L2 norm of each sampled step's update over the layers it measured, divided by what those
    layers usually move (a constant when every step measures every layer; steps of a large model
    that measured different slices of it compare too); NaN where none was measured."""
    update = stream.matrix("update_norm").astype(np.float64)
    measured = np.isfinite(update)
    squares = update**2
    typical = np.where(measured, nanmedian(squares, axis=0), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        total = np.sqrt(quiet(np.nansum, squares, axis=1) / quiet(np.nansum, typical, axis=1))
    total[~measured.any(axis=1)] = np.nan
    return total


def _update_spikes(stream: Stream) -> list[Finding]:
    skipped = set(stream.steps["step"][stream.steps["skipped"].to_numpy()].tolist())
    logs = log10_norms(_total_update(stream))
    keep = np.isfinite(logs) & np.asarray([s not in skipped for s in stream.sampled], dtype=bool)
    logs, steps = logs[keep], stream.sampled[keep]
    if len(logs) <= MIN_HISTORY:
        return []
    index, z, excess = find_spikes(logs)
    if index.size == 0:
        return []
    spike_steps = steps[index]
    gradient_spikes = _gradient_spike_steps(stream, set(spike_steps.tolist()))
    worst_at = int(np.argmax(excess))
    worst_step = int(spike_steps[worst_at])
    ratio = 10 ** float(excess[worst_at])
    return [Finding(
        "update_spike", "warning", _jumped_layers(stream, worst_step), (int(spike_steps[0]), int(spike_steps[-1])),
        {"optimizer": stream.optimizer, "count": int(index.size), "max_ratio": ratio, "max_step": worst_step,
         "max_z": float(np.max(z)), "spike_steps": [int(s) for s in spike_steps[:MAX_LISTED_STEPS]],
         "with_gradient_spike": len(gradient_spikes),
         "gradient_spike_steps": sorted(gradient_spikes)[:MAX_LISTED_STEPS]},
        f"{index.size} sampled step(s) applied an update far larger than the recent ones (worst "
        f"{times(ratio)} at step {worst_step}), {len(gradient_spikes)} of them with a gradient-norm spike: "
        "under Adam such update spikes tend to come before loss spikes; a lower learning rate, a longer "
        "warm-up or a larger Adam epsilon calms them.")]


def _gradient_spike_steps(stream: Stream, steps: set[int]) -> set[int]:
    """Which of ``steps`` the gradient norm also jumped at (3x its recent median)."""
    norms = stream.steps.set_index("step")["global_norm"]
    logs = log10_norms(norms.to_numpy())
    center = rolling_center_spread(pd.Series(logs))[0]
    jumped = logs - center >= math.log10(MIN_RATIO)
    return {int(s) for s, j in zip(norms.index, jumped) if j and int(s) in steps}


def _jumped_layers(stream: Stream, step: int) -> list[str]:
    """The layers whose update grew most at ``step`` relative to their median (3x or more)."""
    row = int(np.searchsorted(stream.sampled, step))
    logs = log10_norms(stream.matrix("update_norm"))
    jump = logs[row] - nanmedian(logs, axis=0)
    order = [j for j in np.argsort(-np.nan_to_num(jump, nan=-np.inf)) if jump[j] >= math.log10(MIN_RATIO)]
    return [stream.names[j] for j in order[:MAX_LAYERS]]
