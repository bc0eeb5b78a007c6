"""Dead layers: parameters whose gradient is absent or exactly zero.

Over the sampled steps of one optimizer, a layer is

* **absent** when it never had a gradient (not used in the forward pass, or
  cut from the graph by ``detach``/``no_grad``);
* **zero** when every gradient it had was exactly 0 (dead ReLUs in front of
  it, a multiplication by a zero mask, an unused branch);
* **died** when its gradient became and stayed exactly 0 (or absent) for the
  last :data:`DIED_MIN_FRACTION` (20%) or more of the sampled steps, and at
  least :data:`DIED_MIN_POINTS` of them.

One finding per optimizer, ``warning``; ``critical`` when the dead layers hold
:data:`CRITICAL_PARAM_FRACTION` (50%) or more of the optimizer's parameters.
"""

from __future__ import annotations

import numpy as np

from gradprobe.analysis.findings import Finding, clip_command
from gradprobe.analysis.robust import sustained_from
from gradprobe.store.streams import Stream

DIED_MIN_FRACTION = 0.2
DIED_MIN_POINTS = 5
CRITICAL_PARAM_FRACTION = 0.5


def detect(stream: Stream) -> list[Finding]:
    """At most one dead-layer finding for ``stream``."""
    n = len(stream.sampled)
    if n == 0 or not len(stream.layer_ids):
        return []
    present = stream.present
    norms = stream.matrix("norm")
    zero = present & (norms == 0) & (stream.matrix("nonfinite") == 0)
    absent = ~present.any(axis=0)
    all_zero = present.any(axis=0) & ~(present & ~zero).any(axis=0)
    quiet_rows = zero | ~present
    since = sustained_from(quiet_rows)
    died = (~absent & ~all_zero & (since > 0) & (n - since >= max(DIED_MIN_POINTS, DIED_MIN_FRACTION * n)))
    dead = absent | all_zero | died
    if not dead.any():
        return []
    numel = stream.numel
    fraction = float(numel[dead].sum() / max(numel.sum(), 1))
    first_death = int(stream.sampled[since[died].min()]) if died.any() else stream.first_step
    parts, actions = [], []
    if absent.any():
        parts.append(f"{int(absent.sum())} never received a gradient")
        actions.append("for those with none, check that the forward pass uses them and that no torch.no_grad(), "
                       "detach() or eval helper cuts them from the loss (if they are meant to be frozen, call "
                       "requires_grad_(False) and leave them out of the optimizer)")
    if all_zero.any():
        parts.append(f"{int(all_zero.sum())} always had an all-zero gradient")
        actions.append("for the all-zero ones, look for dead ReLUs or a zero mask in front of them (check the "
                       "initialisation of the biases before them, use LeakyReLU/GELU)")
    if died.any():
        parts.append(f"{int(died.sum())} stopped receiving gradient from step {first_death}")
        actions.append(f"for those that died, look at what changed at step {first_death} (a learning-rate jump, "
                       "an outlier batch) and lower the learning rate; a clip guards against the large update "
                       f"that kills the units: {clip_command(stream, 'zclip:z=2.5+skip:sigma=6')}")
    return [
        Finding(
            kind="dead_layer",
            severity="critical" if fraction >= CRITICAL_PARAM_FRACTION else "warning",
            layers=[stream.names[j] for j in np.flatnonzero(dead)],
            steps=(first_death if not (absent | all_zero).any() else stream.first_step, stream.last_step),
            evidence={
                "optimizer": stream.optimizer,
                "absent": int(absent.sum()),
                "all_zero": int(all_zero.sum()),
                "died": int(died.sum()),
                "param_fraction": fraction,
                "sampled_steps": n,
            },
            advice=f"Of the optimizer's layers, {', '.join(parts)}: {'; '.join(actions)}.",
        )
    ]
