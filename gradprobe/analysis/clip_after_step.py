"""Clipping after the update: a script's clip call that runs after ``optimizer.step()``.

The PyTorch recorder notes every ``clip_grad_norm_`` call that comes after an
optimizer step and before the next ``backward()`` (``run.json``, the
optimizer's ``clip_after_step`` entry: calls, first and last step, max_norm).
Such a call rescales gradients that the update has already used and that the
next ``zero_grad()`` discards: the clip has no effect at all, and training
runs unclipped. From :data:`MIN_CALLS` such call it is a ``warning``: the
script believes it is protected and is not.
"""

from __future__ import annotations

from gradprobe.analysis.findings import Finding, clip_command, round3
from gradprobe.store.streams import Stream

MIN_CALLS = 1


def detect(stream: Stream) -> list[Finding]:
    """At most one clip-after-step finding for ``stream``."""
    entry = stream.info.get("clip_after_step")
    if not isinstance(entry, dict) or entry.get("calls", 0) < MIN_CALLS:
        return []
    before = int((stream.steps["clip_threshold"].notna()).sum())
    calls = int(entry["calls"])
    max_norm = float(entry["max_norm"])
    return [Finding(
        kind="clip_after_step",
        severity="warning",
        layers=[],
        steps=(int(entry["first_step"]), int(entry["last_step"])),
        evidence={"optimizer": stream.optimizer, "calls_after_step": calls, "calls_before_step": before,
                  "fraction_after_step": calls / (calls + before), "max_norm": max_norm},
        advice=(f"clip_grad_norm_(..., {max_norm:g}) ran after optimizer.step() on {calls} step(s), so it "
                "clipped gradients the update had already used: it had no effect and training ran unclipped. "
                "Move the call between loss.backward() and optimizer.step() (after scaler.unscale_(optimizer) "
                f"with AMP), or let gradprobe clip at that point: {clip_command(stream, f'global-norm:max={round3(max_norm)}')}."),
    )]
