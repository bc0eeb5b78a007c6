"""Gradient accumulation that divides the loss twice.

The PyTorch recorder counts the steps whose K > 1 backward passes each divided
their loss by K at least twice (``run.json``, the optimizer's
``loss_divided_twice`` entry: calls, first and last step, micro_batches; see
:mod:`gradprobe.pytorch.loss_factors`). The accumulated gradient is then the
micro-batches' mean divided by K once more, and so are the recorded loss and
gradient norms.

Severity: under an optimizer whose update scales with the gradient (SGD and
its kin) it is a ``warning``: the learning rate is in effect K times smaller
than the one the script sets. Adaptive optimizers (:data:`SCALE_INVARIANT`:
Adam and its kin divide by a running gradient scale) take nearly the same
steps, so it is ``info``: the loss and norms are K times too small, so a
fixed clip threshold tuned on them or on another run is off by K. From
:data:`MIN_STEPS` (the first) such step: every pass of a step dividing by
exactly the step's own pass count, twice, does not happen by chance.
"""

from __future__ import annotations

from gradprobe.analysis.findings import Finding
from gradprobe.store.streams import Stream

MIN_STEPS = 1
SCALE_INVARIANT = ("Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Adagrad", "Adadelta", "RMSprop", "Adafactor",
                   "SparseAdam", "FusedAdam", "DeepSpeedCPUAdam", "Lion", "Adan")


def detect(stream: Stream) -> list[Finding]:
    """At most one loss-divided-twice finding for ``stream``."""
    entry = stream.info.get("loss_divided_twice")
    if not isinstance(entry, dict) or entry.get("calls", 0) < MIN_STEPS:
        return []
    k = int(entry["micro_batches"])
    optimizer_class = str(stream.info.get("class") or "the optimizer")
    adaptive = optimizer_class in SCALE_INVARIANT
    effect = (f"{optimizer_class} divides by a running gradient scale, so its steps hardly change, but the "
              f"recorded loss and gradient norms are {k}x too small (a fixed clip threshold taken from them is "
              f"off by {k}x)" if adaptive else
              f"under {optimizer_class} that is a learning rate {k}x smaller than the one the script sets")
    return [Finding(
        kind="loss_divided_twice",
        severity="info" if adaptive else "warning",
        layers=[],
        steps=(int(entry["first_step"]), int(entry["last_step"])),
        evidence={"optimizer": stream.optimizer, "steps": int(entry["calls"]), "micro_batches": k,
                  "gradient_scale": 1.0 / k},
        advice=(f"Each of the {k} backward passes per step divided its loss by {k} twice, so the accumulated "
                f"gradient is the micro-batches' mean divided by {k} once more: {effect}. Divide the loss by "
                "the accumulation count once (in the loss function or in the loop, not both; Lightning's "
                "accumulate_grad_batches and Hugging Face's Trainer already divide it)."),
    )]
