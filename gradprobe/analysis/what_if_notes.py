"""What a reader needs to read a what-if right: it replays the recorded steps, those steps may
have been clipped already (by the script or by gradprobe), and a tune may have measured the specs."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from gradprobe.store.streams import Stream

REPLAY_CAVEAT = ("A what-if replays the recorded steps: training under a spec would have taken another path, so it "
                 "shows what the spec does to these steps, not how training would end; gradprobe tune measures that.")


def what_if_notes(streams: Sequence[Stream], meta: Mapping[str, Any],
                  tunes: Sequence[Any] = ()) -> list[str]:
    """The replay caveat, one sentence per optimizer whose steps were clipped when recorded, and one
    per tune of this run (``gradprobe.tuning.measured.MeasuredTune``: its ``summary()``)."""
    return [REPLAY_CAVEAT, *_clipped_notes(streams, meta), *(tune.summary() for tune in tunes)]


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
