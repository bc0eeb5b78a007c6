"""Candidate clip policies for a tune, derived from a profiled run by the policies themselves."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from gradprobe.analysis import diagnose, split_streams
from gradprobe.analysis.first_choice import STRATEGY, first_choice
from gradprobe.analysis.recommend import history
from gradprobe.errors import GradprobeError
from gradprobe.policies import RECOMMENDED, parse_spec
from gradprobe.store import Run

NO_CLIPPING = "no clipping"
_SPEC_START = re.compile(r"^\s*([a-z][a-z-]*:|none\s*$)", re.IGNORECASE)


@dataclass(frozen=True)
class Candidate:
    """One policy to try: a clip spec, or ``None`` for training without clipping."""

    label: str
    spec: str | None


def derive_candidates(run: Run) -> list[Candidate]:
    """No clipping, ``recommend``'s first choice, then each recommended policy's tune candidates (for
    global-norm: thresholds at the 50th, 90th, 95th and 99th percentile of the norms and small fixed
    ones; AutoClip; ZClip), from ``run``'s first optimizer and the steps before any explosion (as
    ``recommend`` reads them)."""
    streams = [s for s in split_streams(run) if not s.steps.empty]
    if not streams:
        raise GradprobeError(f"{run.path}: no recorded steps to derive clip candidates from")
    findings = diagnose(streams)
    past = history(streams[0], findings)
    candidates = [Candidate(NO_CLIPPING, None)]
    lead = first_choice(streams[0], findings)
    if lead is not None:
        candidates.append(Candidate(STRATEGY, lead[0]))
    for cls in RECOMMENDED:
        for label, spec in cls.tune_candidates(past):
            if spec not in {c.spec for c in candidates}:
                candidates.append(Candidate(label, spec))
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
