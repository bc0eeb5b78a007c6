"""Candidate clip policies for a tune, derived from a profiled run's recommendations."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from gradprobe.analysis import diagnose, recommend, split_streams
from gradprobe.errors import GradprobeError
from gradprobe.policies import parse_spec
from gradprobe.store import Run

# Global-norm thresholds at these percentiles of the profiled global norms.
PERCENTILES = (50.0, 90.0, 95.0, 99.0)
NO_CLIPPING = "no clipping"
_SPEC_START = re.compile(r"^\s*([a-z][a-z-]*:|none\s*$)", re.IGNORECASE)


@dataclass(frozen=True)
class Candidate:
    """One policy to try: a clip spec, or ``None`` for training without clipping."""

    label: str
    spec: str | None


def derive_candidates(run: Run) -> list[Candidate]:
    """No clipping; global-norm at the :data:`PERCENTILES`; AutoClip; ZClip. Thresholds come from
    ``run``'s first optimizer, from the steps before any explosion (as ``recommend`` does)."""
    streams = [s for s in split_streams(run) if not s.steps.empty]
    if not streams:
        raise GradprobeError(f"{run.path}: no recorded steps to derive clip candidates from")
    findings = diagnose(streams)
    labelled = [(f"global-norm p{p:g}", recommend(streams[:1], findings, ["percentile"], p)) for p in PERCENTILES]
    labelled += [("AutoClip", recommend(streams[:1], findings, ["autoclip"])),
                 ("ZClip", recommend(streams[:1], findings, ["zclip"]))]
    candidates = [Candidate(NO_CLIPPING, None)]
    for label, recommendations in labelled:
        if recommendations and recommendations[0].spec not in {c.spec for c in candidates}:
            candidates.append(Candidate(label, recommendations[0].spec))
    return candidates


def parse_candidates(texts: Iterable[str]) -> list[Candidate]:
    """``--candidates`` values: specs separated by commas (a comma starts a new spec only before
    ``name:``, so ``global-norm:max=1,norm=inf`` stays whole); ``none`` means no clipping."""
    specs: list[str] = []
    for text in texts:
        for piece in text.split(","):
            if _SPEC_START.match(piece) or not specs:
                specs.append(piece.strip())
            else:
                specs[-1] += "," + piece.strip()
    candidates = []
    for spec in filter(None, specs):
        if spec.lower() == "none":
            candidates.append(Candidate(NO_CLIPPING, None))
        else:
            candidates.append(Candidate(spec, str(parse_spec(spec))))
    if not candidates:
        raise GradprobeError("--candidates is empty: give clip specs separated by commas, or 'none'")
    return list(dict.fromkeys(candidates))
