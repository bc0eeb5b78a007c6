"""Explosion: a sustained rise of the global gradient norm, or of a layer's, out of its normal band.

On log10 norms (non-finite and zero values left out), for the global norm at
every step and for each layer at its sampled steps (at least
:data:`MIN_POINTS` values):

* the *normal band* comes from the first :data:`BASELINE_FRACTION` of the
  values: median + max(:data:`BAND_SIGMAS` x robust sigma (1.4826 x MAD),
  log10 :data:`BAND_MIN_FACTOR`);
* the *final level* is the median of the last :data:`TAIL_FRACTION`, the
  *peak* their maximum;
* the series is split into at most :data:`MAX_BINS` bins; it *left its band*
  at the first step of the first bin from which every bin median stays above
  the band until the end (the run never came back);
* the *trend* after leaving is the Theil-Sen slope of the bin medians
  (decades per 1,000 steps, with its 95% confidence bounds).

A series explodes when it left its band and its final level is at least
:data:`WARNING_FACTOR` (10x) above the baseline median: severity ``warning``;
``critical`` when the peak reaches :data:`CRITICAL_FACTOR` (1,000x) the
baseline, or when the global norm
ends non-finite after growing. One finding per optimizer; ``layers`` lists
the exploding layers, fastest-growing first.

The recorded loss from the departure step on is the evidence of harm
(:mod:`gradprobe.analysis.loss_trend`): while it steadily improves the finding
is at most ``info`` (gradient norms that rise as the loss falls are common late
in healthy training, as the loss surface sharpens), unless the norm ended
non-finite. The advice quotes the loss and proposes a global-norm clip at the
top of the healthy band.

A run whose norms first fell far (convergence) and then rose again stays under
the early band; so the global norm is also measured *from its trough* (the
lowest bin median, band :data:`BAND_MIN_FACTOR` over it): a rise of
:data:`WARNING_FACTOR` or more from there is an explosion only while the loss
diverges from the departure on (``from_trough`` in the evidence), since norms
also rebound harmlessly, e.g. when a warmup ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradprobe.analysis.findings import Finding, clip_command, round3, script_name, times, worst
from gradprobe.analysis.loss_trend import stream_loss_trend
from gradprobe.analysis.robust import bin_medians, log10_norms, robust_sigma, sustained_from, theil_sen
from gradprobe.store.streams import Stream

MIN_POINTS = 20
BASELINE_FRACTION = 0.2
TAIL_FRACTION = 0.1
BAND_SIGMAS = 4.0
BAND_MIN_FACTOR = 3.0
MAX_BINS = 200
WARNING_FACTOR = 10.0
CRITICAL_FACTOR = 1000.0


@dataclass(frozen=True)
class Growth:
    """How one norm series rose out of its band (norms, not logs)."""

    departure_step: int
    baseline: float
    band_upper: float
    final: float
    peak: float
    slope: float
    slope_low: float
    slope_high: float
    ended_nonfinite: bool

    @property
    def factor(self) -> float:
        """Final level over the baseline median."""
        return self.final / self.baseline


def growth(steps: np.ndarray, norms: np.ndarray, from_trough: bool = False) -> Growth | None:
    """The sustained rise of ``norms`` (recorded at ``steps``), or ``None`` when it stayed in band.

    ``from_trough``: measure the rise from the lowest bin median instead of the first
    :data:`BASELINE_FRACTION` (a rebound after the norms had fallen), with a band of
    :data:`BAND_MIN_FACTOR` over that trough.
    """
    logs = log10_norms(norms)
    finite = np.isfinite(logs)
    if finite.sum() < MIN_POINTS:
        return None
    y, x = logs[finite], np.asarray(steps)[finite]
    tail = max(1, math.ceil(len(y) * TAIL_FRACTION))
    starts, medians = bin_medians(y, MAX_BINS)
    if from_trough:
        before_tail = int(np.searchsorted(starts, len(y) - tail))
        if before_tail < 1:
            return None
        lowest = int(np.argmin(medians[:before_tail]))
        base, upper = float(medians[lowest]), float(medians[lowest]) + math.log10(BAND_MIN_FACTOR)
    else:
        lowest = 0
        head = y[: max(1, math.ceil(len(y) * BASELINE_FRACTION))]
        base = float(np.median(head))
        upper = base + max(BAND_SIGMAS * float(robust_sigma(head)), math.log10(BAND_MIN_FACTOR))
    final = float(np.median(y[-tail:]))
    if final <= upper or final - base < math.log10(WARNING_FACTOR):
        return None
    first_bin = int(sustained_from(medians[lowest:] > upper))
    if first_bin < 0:
        return None
    first_bin += lowest
    start = int(starts[first_bin])
    departure = start + int(np.argmax(y[start:] > upper))
    slope, low, high = theil_sen(x[starts[first_bin:]].astype(np.float64), medians[first_bin:])
    last = np.asarray(norms)[-1]
    return Growth(
        departure_step=int(x[departure]),
        baseline=10**base,
        band_upper=10**upper,
        final=10**final,
        peak=10 ** float(np.max(y[-tail:])),
        slope=slope * 1000,
        slope_low=low * 1000,
        slope_high=high * 1000,
        ended_nonfinite=not math.isfinite(float(last)),
    )


def _rebound(stream: Stream) -> Growth | None:
    """A rise of the global norm from its trough, kept only when the loss diverges from there."""
    steps = stream.steps
    g = growth(steps["step"].to_numpy(), steps["global_norm"].to_numpy(), from_trough=True)
    if g is None:
        return None
    trend = stream_loss_trend(stream, g.departure_step)
    return g if trend is not None and trend.diverging else None


def _severity(g: Growth, is_global: bool) -> str:
    if g.peak / g.baseline >= CRITICAL_FACTOR or (is_global and g.ended_nonfinite):
        return "critical"
    return "warning"


def detect(stream: Stream) -> list[Finding]:
    """At most one explosion finding for ``stream``."""
    steps = stream.steps
    overall = growth(steps["step"].to_numpy(), steps["global_norm"].to_numpy())
    if overall is None:
        overall = _rebound(stream)
        rebound = overall is not None
    else:
        rebound = False
    norms = stream.matrix("norm")
    layers = []
    for j, name in enumerate(stream.names):
        g = growth(stream.sampled, norms[:, j])
        if g is not None:
            layers.append((name, g))
    if overall is None and not layers:
        return []
    layers.sort(key=lambda item: -item[1].factor)
    lead = overall if overall is not None else layers[0][1]
    severities = [_severity(g, False) for _, g in layers]
    if overall is not None:
        severities.append(_severity(overall, True))
    departure = min([g.departure_step for _, g in layers] + ([overall.departure_step] if overall else []))
    subject = "The global gradient norm" if overall is not None else f"The gradient norm of {layers[0][0]}"
    trend = stream_loss_trend(stream, departure)
    severity = worst(severities)
    loss_evidence = trend.evidence() if trend is not None else {}
    guard = clip_command(stream, f"global-norm:max={round3(lead.band_upper)}")
    if trend is not None and trend.improving and not lead.ended_nonfinite:
        severity = "info"
        advice = (f"{subject} grew {times(lead.factor)} from step {lead.departure_step} while {trend.describe()}: "
                  "training is not hurt, so nothing needs changing; to guard against a later blow-up, clip at "
                  f"the old band: {guard}.")
    else:
        harm = f" and {trend.describe()}" if trend is not None else ""
        advice = (f"{subject} grew {times(lead.factor)} from step {lead.departure_step} and stayed there{harm}: "
                  "lower the learning rate (or add warmup) and clip the global norm at its healthy band: "
                  f"{guard} (or let `gradprobe tune {script_name(stream)}` pick a policy).")
    return [
        Finding(
            kind="explosion",
            severity=severity,
            layers=[name for name, _ in layers],
            steps=(departure, stream.last_step),
            evidence={
                "optimizer": stream.optimizer,
                "global": overall is not None,
                "growth_factor": lead.factor,
                "baseline_norm": lead.baseline,
                "band_upper": lead.band_upper,
                "final_norm": lead.final,
                "peak_norm": lead.peak,
                "departure_step": lead.departure_step,
                "slope_decades_per_1k_steps": lead.slope,
                "slope_low": lead.slope_low,
                "slope_high": lead.slope_high,
                "ended_nonfinite": lead.ended_nonfinite,
                "layers_exploding": len(layers),
                "from_trough": rebound,
                **loss_evidence,
            },
            advice=advice,
        )
    ]
