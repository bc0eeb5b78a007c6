"""Failed to learn: the loss blew up, came back down, and never got below where it started.

A learning rate far above the stable one can wreck the weights in the first
few steps (the loss rises a thousandfold, ReLUs die, activations saturate)
and then settle on a constant predictor: the loss falls back to about its
starting level and stays there, and the gradient norms, highest during the
blow-up, keep falling. The explosion detector sees no sustained rise (its
baseline is the blow-up itself) and the loss trend reads as "improving",
measured from the blown-up start. What tells the two apart is the first
recorded loss: over the finite, positive losses of an optimizer's applied
steps (at least :data:`MIN_STEPS`),

* the loss *blew up* when it stayed at least :data:`BLOW_UP_FACTOR` (100x)
  its first value for :data:`SUSTAINED` (10) steps in a row, a rise no healthy
  run shows; corrupted batches (a spike, label noise) raise single steps
  that far, and the steps around them stay low;
* it *never recovered* when the median of its last 20% (the loss trend's
  edges, :data:`gradprobe.analysis.loss_trend.EDGE_FRACTION`) is still at least :data:`NO_PROGRESS_FRACTION`
  (half) of the first value.

Both: ``critical``, the run learned nothing past the blow-up. A run that NaNs
is the non-finite detector's, and a loss whose constant-predictor level is far
below its first value (a target with a large mean) is not seen as failing.
"""

from __future__ import annotations

import math

import numpy as np

from gradprobe.analysis.findings import Finding, script_name, times
from gradprobe.analysis.loss_trend import EDGE_FRACTION
from gradprobe.store.streams import Stream

MIN_STEPS = 20
BLOW_UP_FACTOR = 100.0
SUSTAINED = 10
NO_PROGRESS_FRACTION = 0.5


def detect(stream: Stream) -> list[Finding]:
    """At most one failed-to-learn finding for ``stream``."""
    applied = stream.steps[~stream.steps["skipped"].to_numpy()]
    losses = applied["loss"].to_numpy(dtype=np.float64)
    steps = applied["step"].to_numpy()
    keep = np.isfinite(losses)
    losses, steps = losses[keep], steps[keep]
    if len(losses) < MIN_STEPS or losses[0] <= 0:
        return []
    first = float(losses[0])
    held = np.lib.stride_tricks.sliding_window_view(losses, SUSTAINED).min(axis=1)  # lowest of each run of steps
    final = float(np.median(losses[-max(1, math.ceil(len(losses) * EDGE_FRACTION)):]))
    if held.max() < BLOW_UP_FACTOR * first or final < NO_PROGRESS_FRACTION * first:
        return []
    peak_at = int(np.argmax(losses))
    peak = float(losses[peak_at])
    blew_up = int(steps[int(np.argmax(losses >= math.sqrt(BLOW_UP_FACTOR) * first))])
    return [Finding(
        kind="failed_to_learn",
        severity="critical",
        layers=[],
        steps=(blew_up, int(steps[-1])),
        evidence={"optimizer": stream.optimizer, "first_loss": first, "peak_loss": peak,
                  "peak_step": int(steps[peak_at]), "final_loss": final, "blow_up_factor": peak / first,
                  "final_over_first": final / first},
        advice=(f"The loss rose {times(peak / first)} from {first:.3g} by step {int(steps[peak_at])} and then "
                f"settled at {final:.3g}, no better than where it started: the blow-up wrecked the weights "
                "(dead or saturated units, a model that predicts a constant) and the run learned nothing "
                "after it. Lower the learning rate (10x is a start) or add warmup, and rerun; "
                f"`gradprobe tune {script_name(stream)}` can compare clip policies once it trains."),
    )]
