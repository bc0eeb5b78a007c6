"""Too few steps: a run (or an optimizer) that recorded too little to be judged.

The trend detectors need :data:`MIN_STEPS` (20) steps of an optimizer (the
explosion detector's ``MIN_POINTS``, the spike detector's ``MIN_HISTORY``, the
clip-saturation detector's ``MIN_STEPS``); with fewer, "no problem found"
would mean "nothing looked at". So an optimizer with fewer recorded steps, or
a run with no optimizer steps at all, is a ``warning``: the report must not
call it healthy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gradprobe.analysis.findings import Finding
from gradprobe.store.streams import Stream

MIN_STEPS = 20

NO_STEPS_ADVICE = (
    "No optimizer step was recorded, so nothing could be diagnosed. Check that the script reached its "
    "training loop and updates the weights through optimizer.step() (a loop that changes p.data by hand "
    "while an optimizer exists is not seen), then profile it again: `gradprobe profile {script}`."
)


def _script(meta: dict | None) -> str:
    script = (meta or {}).get("script")
    return Path(script).name if script else "train.py"


def detect(streams: Sequence[Stream], meta: dict | None = None) -> list[Finding]:
    """One finding per optimizer with fewer than :data:`MIN_STEPS` steps; one when none has any step."""
    counted = [stream for stream in streams if len(stream.steps)]
    if not counted:
        return [Finding(kind="too_few_steps", severity="warning", layers=[], steps=(0, 0),
                        evidence={"optimizer": 0, "recorded_steps": 0, "min_steps": MIN_STEPS},
                        advice=NO_STEPS_ADVICE.format(script=_script(meta)))]
    return [
        Finding(
            kind="too_few_steps",
            severity="warning",
            layers=[],
            steps=(stream.first_step, stream.last_step),
            evidence={"optimizer": stream.optimizer, "recorded_steps": len(stream.steps), "min_steps": MIN_STEPS},
            advice=(f"Only {len(stream.steps)} step(s) of optimizer {stream.optimizer} were recorded; the "
                    f"detectors need at least {MIN_STEPS} to judge trends and spikes, so an empty report means "
                    f"little. Profile a longer run (more batches or epochs): `gradprobe profile {_script(meta)} "
                    "-- ARGS`."),
        )
        for stream in counted if len(stream.steps) < MIN_STEPS
    ]
