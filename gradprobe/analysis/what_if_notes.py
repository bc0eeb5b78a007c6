"""What a reader needs to read a what-if right: it replays the recorded steps, those steps may
have been clipped already (by the script or by gradprobe), a first choice that clips most steps
is a step-size change the replay cannot judge, and a tune may have measured the specs."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from gradprobe.analysis.first_choice import STRATEGY as FIRST_CHOICE
from gradprobe.store.streams import Stream

# Above this share of clipped steps a clip no longer removes outliers: it scales most updates, as a
# smaller learning rate would. Whether that trains better depends on the optimizer and the noise
# (with SGD under heavy-tailed noise a far smaller threshold won in benchmarks/outcomes), which
# only trials measure.
MOSTLY_CLIPPED = 0.5

REPLAY_CAVEAT = ("A what-if replays the recorded steps: training under a spec would have taken another path, so it "
                 "shows what the spec does to these steps, not how training would end; gradprobe tune measures that.")


def what_if_notes(streams: Sequence[Stream], meta: Mapping[str, Any], tunes: Sequence[Any] = (),
                  recommendations: Sequence[Any] = ()) -> list[str]:
    """The replay caveat, one sentence per optimizer whose steps were clipped when recorded, one per
    first choice (of ``recommendations``) that clips most steps, and one per tune of this run
    (``gradprobe.tuning.measured.MeasuredTune``: its ``summary()``)."""
    return [REPLAY_CAVEAT, *_clipped_notes(streams, meta), *_step_size_notes(recommendations),
            *(tune.summary() for tune in tunes)]


def _step_size_notes(recommendations: Sequence[Any]) -> list[str]:
    return [f"The first choice {rec.spec} clips {rec.replay.clipped_fraction:.0%} of these steps: clipping most "
            "steps scales most updates, as a smaller learning rate would, and which size trains best is not "
            "something a replay can show; `gradprobe tune` measures it (another threshold may do better)."
            for rec in recommendations
            if rec.strategy == FIRST_CHOICE and rec.replay.clipped_fraction > MOSTLY_CLIPPED]


def _clipped_notes(streams: Sequence[Stream], meta: Mapping[str, Any]) -> list[str]:
    if meta.get("clip"):
        return [f"This run was clipped by gradprobe ({meta['clip']}): each spec is replayed on the norms "
                "before that clip, as if it replaced it."]
    notes = []
    for stream in streams:
        if stream.script_clip_scale is None:
            continue
        steps = stream.steps
        clipped = steps["clip_threshold"].notna().to_numpy() & (steps["clip_scale"].to_numpy(np.float64) < 1)
        owner = f" (optimizer {stream.optimizer})" if len(streams) > 1 else ""
        notes.append(f"The script clipped {clipped.mean():.0%} of these steps itself{owner} at "
                     f"{float(np.nanmedian(steps['clip_threshold'].to_numpy(np.float64))):.3g}: each spec is "
                     "replayed on the norms before the script's clip, as if it replaced it.")
    return notes
