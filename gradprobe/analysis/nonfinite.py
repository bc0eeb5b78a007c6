"""Non-finite gradients: the first step with NaN/Inf and the layer where it most likely started.

A step is non-finite when its pre-clip global norm is NaN or Inf. The likely
origin is the first layer in backward order (output to input, so the deepest
layer id first) that held NaN/Inf elements at the first sampled step with any;
when the loss itself was already non-finite at or before that step, the
batch's data or the forward pass is the origin (NaN from the data), else, with
a finite recorded loss, the backward pass of that layer (NaN from the model);
``first_loss_nonfinite_step`` in the evidence tells the two apart.

Severity: ``critical`` when any non-finite step was applied (not skipped);
when every one was skipped (dynamic loss scaling backs off on overflow, as
AMP does) it is ``info``, or ``warning`` from :data:`SKIPPED_WARNING_FRACTION`
(5%) of the steps, a loss scaler that keeps overflowing.
"""

from __future__ import annotations

import numpy as np

from gradprobe.analysis.findings import Finding, clip_command
from gradprobe.store.streams import Stream

SKIPPED_WARNING_FRACTION = 0.05


def _origin(stream: Stream) -> tuple[int | None, list[str]]:
    """The first sampled step with non-finite layer values, and those layers in backward order."""
    if not len(stream.sampled):
        return None, []
    bad = (stream.matrix("nonfinite") > 0) | (stream.present & ~np.isfinite(stream.matrix("norm")))
    rows = np.flatnonzero(bad.any(axis=1))
    if rows.size == 0:
        return None, []
    row = rows[0]
    columns = np.flatnonzero(bad[row])[::-1]
    return int(stream.sampled[row]), [stream.names[j] for j in columns]


def _nonfinite_loss(losses: np.ndarray) -> np.ndarray:
    """Where the loss was NaN/Inf. NaN also stands for "not captured", so it counts only after
    the first finite loss."""
    known = np.isfinite(losses)
    if not known.any():
        return np.isinf(losses)
    return ~known & (np.arange(len(losses)) >= np.argmax(known))


def detect(stream: Stream) -> list[Finding]:
    """At most one non-finite finding for ``stream``."""
    steps = stream.steps
    norms = steps["global_norm"].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(norms)
    layer_step, layers = _origin(stream)
    if not bad.any() and layer_step is None:
        return []
    step_numbers = steps["step"].to_numpy()
    bad_steps = step_numbers[bad]
    first = int(bad_steps[0]) if bad_steps.size else layer_step
    last = int(bad_steps[-1]) if bad_steps.size else layer_step
    skipped = steps["skipped"].to_numpy()
    applied = int((bad & ~skipped).sum())
    fraction = float(bad.mean())
    if applied or (layer_step is not None and not bad.any()):
        severity = "critical"
    elif fraction >= SKIPPED_WARNING_FRACTION:
        severity = "warning"
    else:
        severity = "info"
    losses = steps["loss"].to_numpy(dtype=np.float64)
    loss_bad = step_numbers[_nonfinite_loss(losses)]
    loss_first = int(loss_bad[0]) if loss_bad.size else None
    before = norms[: int(np.argmax(bad))] if bad.any() else norms
    finite_before = before[np.isfinite(before)]
    if loss_first is not None and loss_first <= first:
        where = f"the loss was already non-finite at step {loss_first}, so it came from that step's batch or the " \
                "forward pass: check the batch with torch.isfinite(inputs).all(), then the loss and the forward " \
                "pass (log of 0, division by 0, overflow in float16)"
    elif layers:
        known = "the loss was finite, so the backward pass made it: " if np.isfinite(losses).any() else ""
        where = f"{known}it starts in {layers[0]} (the first layer in " \
                f"backward order with NaN/Inf, step {layer_step}): look for an operation whose gradient is " \
                "infinite where its value is not (sqrt or log at 0, pow with a negative base, torch.where over " \
                "such a branch) in or after that layer"
    else:
        where = "record per-layer statistics at every step (--every 1) to locate the layer"
    if severity == "critical":
        action = ("; lower the learning rate or clip, and a skip policy keeps such updates out of the weights: "
                  f"{clip_command(stream, 'zclip:z=2.5+skip:sigma=6')}.")
    elif severity == "warning":
        action = ("; the updates were skipped, so the weights stayed finite, but the loss scaler keeps "
                  "overflowing and each overflow is a lost step: lower GradScaler(init_scale=...) or its "
                  "growth_factor, or train in bfloat16, which needs no loss scaling.")
    else:
        action = "; the updates were skipped, so the weights stayed finite: nothing to change."
    return [
        Finding(
            kind="nonfinite",
            severity=severity,
            layers=layers,
            steps=(first, last),
            evidence={
                "optimizer": stream.optimizer,
                "first_step": first,
                "nonfinite_steps": int(bad.sum()),
                "applied_steps": applied,
                "skipped_steps": int((bad & skipped).sum()),
                "fraction": fraction,
                "first_layer_step": layer_step,
                "first_loss_nonfinite_step": loss_first,
                "last_finite_norm": float(finite_before[-1]) if finite_before.size else None,
            },
            advice=f"Gradients became NaN/Inf at step {first}; {where}{action}",
        )
    ]
