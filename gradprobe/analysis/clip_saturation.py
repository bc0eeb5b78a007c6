"""Clip saturation: clipping that fires on nearly every step, never fires, or clips nothing.

Looks only at steps where a clip threshold was recorded (``clip_threshold``
not NaN: gradprobe's own policy, or a script's ``clip_grad_norm_`` call).
A step *clipped* when its recorded scale is below :data:`CLIPPED_SCALE`
(a rescale of less than 0.1% is not clipping). With at least
:data:`MIN_STEPS` such steps:

* **always**: clipped on :data:`ALWAYS_FRACTION` (90%) or more of the steps.
  Many recipes do this on purpose: the classic LSTM language model clips
  at 0.25 on nearly every step, and AutoClip at its default p=10 (what
  ``gradprobe recommend`` proposes) clips about 90% of the steps by
  construction; the clip then normalises the step size. What matters is
  whether it hides a problem, so the recorded loss decides
  (:mod:`gradprobe.analysis.loss_trend`): while the loss steadily improves it
  is ``info``; when the loss is flat or rising (or was not recorded) it is
  ``warning`` (the clip is a learning-rate cut that stalls training or masks
  growing gradients), ``critical`` when the mean scale is also
  :data:`CRITICAL_MEAN_SCALE` (0.1) or less;
* **never**: clipped on no step: ``warning`` when the largest pre-clip norm
  stays under :data:`NEVER_MARGIN` (a third) of the threshold (the norms could
  triple, leaving the explosion detector's band, before it acted), else
  ``info`` (a safety net that was not needed). gradprobe's own first choice
  for a healthy run is such a net, at 2x the largest norm
  (:data:`gradprobe.analysis.first_choice.GUARD`, a ratio of 0.5): rerun with
  it, the new run's largest norm may come out lower, and a third leaves it
  1.5x room before the two disagree;
* **clips nothing**: the pre-clip norm was recorded as exactly 0 while the
  optimizer received a non-zero gradient on :data:`EMPTY_FRACTION` (50%) or
  more of the steps: ``critical``, the clip call was given no parameters
  (for example a parameter generator already consumed).
"""

from __future__ import annotations

import numpy as np

from gradprobe.analysis.findings import Finding, clip_command, round3, script_name
from gradprobe.analysis.loss_trend import stream_loss_trend
from gradprobe.store.streams import Stream

CLIPPED_SCALE = 0.999
MIN_STEPS = 20
ALWAYS_FRACTION = 0.9
CRITICAL_MEAN_SCALE = 0.1
NEVER_MARGIN = 1 / 3
EMPTY_FRACTION = 0.5


def _finding(stream: Stream, steps, severity: str, evidence: dict, advice: str) -> Finding:
    numbers = steps["step"].to_numpy()
    return Finding(
        kind="clip_saturation",
        severity=severity,
        layers=[],
        steps=(int(numbers[0]), int(numbers[-1])),
        evidence={"optimizer": stream.optimizer, **evidence},
        advice=advice,
    )


def detect(stream: Stream) -> list[Finding]:
    """At most one clip-saturation finding for ``stream``."""
    steps = stream.steps
    clipping = steps[np.isfinite(steps["clip_threshold"].to_numpy(dtype=np.float64))]
    if len(clipping) < MIN_STEPS:
        return []
    pre = clipping["global_norm"].to_numpy(dtype=np.float64)
    post = clipping["global_norm_post"].to_numpy(dtype=np.float64)
    scale = clipping["clip_scale"].to_numpy(dtype=np.float64)
    threshold = clipping["clip_threshold"].to_numpy(dtype=np.float64)
    empty = (pre == 0) & np.isfinite(post) & (post > 0)
    if empty.mean() >= EMPTY_FRACTION:
        return [_finding(
            stream, clipping, "critical",
            {"empty_fraction": float(empty.mean()), "median_post_norm": float(np.median(post[empty])),
             "threshold": float(np.median(threshold))},
            "Clipping is configured but measured a gradient norm of 0 while the optimizer received "
            f"a norm of {np.median(post[empty]):.3g}: the clip call saw no parameters (a generator such as "
            "model.parameters() consumed earlier?); pass a list, `clip_grad_norm_(list(model.parameters()), "
            f"...)`, or let gradprobe clip: {clip_command(stream, f'global-norm:max={round3(np.median(threshold))}')}.",
        )]
    finite = np.isfinite(scale)
    clipped = finite & (scale < CLIPPED_SCALE)
    fraction = float(clipped.mean())
    mean_scale = float(np.mean(scale[finite])) if finite.any() else float("nan")
    evidence = {"steps_with_clipping": len(clipping), "clipped_fraction": fraction, "mean_scale": mean_scale,
                "threshold_median": float(np.median(threshold)), "max_pre_clip_norm": float(np.nanmax(pre)),
                "median_pre_clip_norm": float(np.nanmedian(pre))}
    if fraction >= ALWAYS_FRACTION:
        return [_always(stream, clipping, evidence, fraction, mean_scale, pre)]
    if fraction == 0:
        ratio = float(np.nanmax(pre) / np.median(threshold))
        evidence["max_norm_over_threshold"] = ratio
        spec = f"global-norm:max={round3(np.nanpercentile(pre, 95))}"
        if ratio < NEVER_MARGIN:
            return [_finding(
                stream, clipping, "warning", evidence,
                f"Clipping never fired: the largest pre-clip norm was {ratio:.2g}x the threshold, so the norms "
                "could triple before it acted; lower it to the norms' 95th percentile to clip "
                f"the outliers, {clip_command(stream, spec)}, or compare policies with "
                f"`gradprobe tune {script_name(stream)}`.",
            )]
        return [_finding(
            stream, clipping, "info", evidence,
            f"Clipping never fired (the largest pre-clip norm was {ratio:.2g}x the threshold): a safety net "
            f"that was not needed; nothing to change. To clip the outliers instead: {clip_command(stream, spec)}.",
        )]
    return []


def _always(stream: Stream, clipping, evidence: dict, fraction: float, mean_scale: float, pre) -> Finding:
    """The finding for clipping on nearly every step, judged by the loss."""
    trend = stream_loss_trend(stream)
    if trend is not None:
        evidence.update(trend.evidence())
    spikes_only = clip_command(stream, f"global-norm:max={round3(np.nanpercentile(pre, 95))}")
    lead = f"Clipping fired on {fraction:.0%} of the steps (mean scale {mean_scale:.3g})"
    if trend is not None and trend.improving:
        return _finding(
            stream, clipping, "info", evidence,
            f"{lead} while {trend.describe()}: the clip works as a step-size normaliser, as in recipes that "
            f"clip on most steps on purpose; nothing to change. To clip only outliers instead, try {spikes_only} "
            f"or compare both with `gradprobe tune {script_name(stream)}`.",
        )
    harm = f" and {trend.describe()}" if trend is not None else " (no loss recorded to tell whether it helps)"
    return _finding(
        stream, clipping, "critical" if mean_scale <= CRITICAL_MEAN_SCALE else "warning", evidence,
        f"{lead}{harm}: it acts as a learning-rate cut that may hide growing gradients; clip only the outliers "
        f"with {spikes_only}, lower the learning rate deliberately, or let `gradprobe tune {script_name(stream)}` "
        "compare policies.",
    )
