"""Clip recommendations: a spec per strategy, with a what-if replayed on the recorded steps.

Each strategy is a policy of :data:`gradprobe.policies.RECOMMENDED` that
turns the recorded history of one optimizer into a clip spec of its own
(:meth:`gradprobe.policies.Policy.suggest`); the spec is then parsed and
replayed with the policy's own math (:meth:`gradprobe.policies.Policy.replay`),
the very code that clips live, so the what-if (fraction of steps clipped,
mean and minimum scale) is what that spec would have done on these steps.

The list starts with the spec to bet on first (:mod:`gradprobe.analysis.first_choice`:
a guard that never fires on a healthy run, else a threshold read from the
healthy steps before the trouble). Then one spec per strategy (``P`` is
``--percentile``):

* ``percentile`` (default P = 95): ``global-norm:max=T`` with T the P-th
  percentile of the finite pre-clip global norms it reads (see below): 95
  caps the largest 5% of those; the what-if says how many of all the
  recorded steps that is.
* ``autoclip`` (default P = 10, the paper's): ``autoclip:p=P``, the
  percentile of the norms seen so far, adapting as the norm drifts. It clips
  about 90% of the steps by design; the clip-saturation detector agrees that
  this is fine while the loss improves, and warns only when it does not.
* ``zclip``: ``zclip:z=2.5,alpha=0.97`` (the paper's defaults), clipping
  norms far above an EMA of the mean and variance: aimed at spikes.
* ``agc``: ``agc:lambda=L`` with L the P-th (95th) percentile of each
  sampled step's largest gradient/weight norm ratio (weight norms floored at
  the policy's ``eps``, as the policy does). The replay is an estimate: it
  treats each parameter as one unit.
* ``value``: ``value:max=V`` with V the P-th (95th) percentile of each sampled
  step's largest gradient element; the replayed post-clip norm is an upper
  bound.
* ``layer``: ``layer-norm:max=M`` with M the P-th (95th) percentile of each
  sampled step's largest per-parameter norm; exact, with the clipped fraction
  of every layer that would be clipped.

When the run exploded or went non-finite, thresholds are derived from the
steps before that only (if at least :data:`MIN_HISTORY` remain), so they
reflect healthy training; the what-if still replays every step. Thresholds
are rounded to 3 significant digits; the replay uses the rounded
spec. Per-layer strategies are replayed on the sampled steps (every
``--every`` steps), on the statistics before the script's own clipping
(:meth:`~gradprobe.store.streams.Stream.pre_clip_matrix`), as the global norm is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gradprobe.analysis.findings import Finding, plain_json
from gradprobe.analysis.first_choice import STRATEGY, first_choice
from gradprobe.analysis.robust import quiet
from gradprobe.errors import GradprobeError
from gradprobe.policies import GlobalPolicy, History, Policy, Replay, parse_spec, replay_stream, strategies
from gradprobe.policies.registry import by_strategy
from gradprobe.store import Run
from gradprobe.store.recommendation_file import write_recommendations
from gradprobe.store.streams import Stream

STRATEGIES = strategies()
MIN_HISTORY = 20
MAX_LAYERS_LISTED = 20


@dataclass
class Recommendation:
    """A clip spec, why, and its what-if replay on one optimizer's recorded steps."""

    strategy: str
    spec: str
    rationale: str
    replay: Replay
    optimizer: int | None = None
    per_layer: list[dict[str, Any]] = field(default_factory=list)

    @property
    def policy(self) -> Policy:
        """The recommended policy."""
        return parse_spec(self.spec)

    @property
    def mean_scale(self) -> float:
        """Mean factor over the replayed steps with a finite scale (1.0: never clipped)."""
        values = self.replay.scale[self.replay.evaluated]
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else float("nan")

    @property
    def min_scale(self) -> float:
        """Smallest factor the policy would have applied (1.0: never clipped)."""
        values = self.replay.scale[self.replay.evaluated]
        values = values[np.isfinite(values)]
        return float(values.min()) if values.size else float("nan")

    def threshold_series(self, optimizer: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Steps and global-norm thresholds, for drawing over the global norm (global clip policies only)."""
        policy = self.policy
        if not isinstance(policy, GlobalPolicy) or policy.is_skip or (self.optimizer or 0) != optimizer:
            return None
        return self.replay.steps, self.replay.threshold

    def to_dict(self) -> dict[str, Any]:
        """The recommendation as in the JSON report and ``recommendation.json``."""
        out: dict[str, Any] = {
            "spec": self.spec,
            "strategy": self.strategy,
            "rationale": self.rationale,
            "clipped_fraction": self.replay.clipped_fraction,
            "mean_scale": self.mean_scale,
            "min_scale": self.min_scale,
            "exact": self.replay.exact,
        }
        if self.optimizer is not None:
            out["optimizer"] = self.optimizer
        if self.per_layer:
            out["per_layer"] = self.per_layer
        return out


def healthy_end(stream: Stream, findings: Sequence[Finding]) -> int | None:
    """The first step of an explosion or of non-finite gradients in ``stream`` (``None``: none)."""
    starts = [f.steps[0] for f in findings
              if f.kind in ("explosion", "nonfinite") and f.evidence.get("optimizer") == stream.optimizer]
    return min(starts) if starts else None


def _before(steps: np.ndarray, keep: np.ndarray, end: int | None) -> tuple[np.ndarray, str]:
    """``keep`` narrowed to the steps before ``end`` when at least :data:`MIN_HISTORY` remain."""
    if end is not None and (keep & (steps < end)).sum() >= MIN_HISTORY:
        return keep & (steps < end), f" before the trouble at step {end}"
    return keep, ""


def history(stream: Stream, findings: Sequence[Finding]) -> History:
    """What the policies' suggestions read of ``stream``: the finite pre-clip global norms of the
    applied steps and the sampled per-layer statistics, both before any explosion or NaN."""
    end = healthy_end(stream, findings)
    steps = stream.steps
    keep, note = _before(steps["step"].to_numpy(), ~steps["skipped"].to_numpy(), end)
    norms = steps["global_norm"].to_numpy(dtype=np.float64)[keep]
    rows, layer_note = _before(stream.sampled, np.ones(len(stream.sampled), bool), end)
    return History(norms[np.isfinite(norms)], stream.pre_clip_matrix("norm")[rows], stream.pre_clip_matrix("maxabs")[rows],
                   stream.matrix("param_norm")[rows], note, layer_note)


def _per_layer(stream: Stream, threshold: float) -> list[dict[str, Any]]:
    norms = stream.matrix("norm")
    known = np.isfinite(norms).sum(axis=0)
    fractions = np.where(known > 0, (norms > threshold).sum(axis=0) / np.maximum(known, 1), 0.0)
    p95 = quiet(np.nanpercentile, norms, 95, axis=0)
    order = [j for j in np.argsort(-fractions, kind="stable") if fractions[j] > 0][:MAX_LAYERS_LISTED]
    return [{"layer": stream.names[j], "clipped_fraction": float(fractions[j]), "p95_norm": float(p95[j])}
            for j in order]


def _strategy(name: str, stream: Stream, past: History, p: float) -> Recommendation | None:
    suggestion = by_strategy(name).suggest(past, p)
    if suggestion is None:
        return None
    per_layer = _per_layer(stream, suggestion.layer_threshold) if suggestion.layer_threshold is not None else []
    return Recommendation(name, suggestion.spec, suggestion.rationale,
                          replay_stream(parse_spec(suggestion.spec), stream), per_layer=per_layer)


def first_choices(streams: Sequence[Stream], findings: Sequence[Finding] = ()) -> list[Recommendation]:
    """The spec to bet on first for each optimizer (:mod:`gradprobe.analysis.first_choice`), replayed."""
    out = []
    for stream in streams:
        lead = None if stream.steps.empty else first_choice(stream, findings)
        if lead is not None:
            out.append(Recommendation(STRATEGY, lead[0], lead[1], replay_stream(parse_spec(lead[0]), stream),
                                      optimizer=stream.optimizer if len(streams) > 1 else None))
    return out


def recommend(streams: Sequence[Stream], findings: Sequence[Finding] = (), strategies: Sequence[str] = STRATEGIES,
              percentile: float | None = None) -> list[Recommendation]:
    """One recommendation per strategy (and per optimizer when there are several), in strategy order.

    With every strategy and no ``percentile`` override, the list starts with
    the spec to bet on first (:mod:`gradprobe.analysis.first_choice`).

    ``findings`` (from :func:`~gradprobe.analysis.diagnose`) let the
    strategies use only the steps before an explosion or non-finite
    gradients. ``percentile`` overrides each strategy's default P.
    """
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise GradprobeError(f"unknown strategy {unknown[0]!r}: choose from {', '.join(STRATEGIES)}")
    if percentile is not None and not 0 < percentile <= 100:
        raise GradprobeError(f"--percentile must be in (0, 100], got {percentile:g}")
    out = []
    several = len(streams) > 1
    histories = {id(stream): history(stream, findings) for stream in streams if not stream.steps.empty}
    if tuple(strategies) == tuple(STRATEGIES) and percentile is None:
        out += first_choices(streams, findings)
    for name in strategies:
        default = by_strategy(name).default_percentile
        p = percentile if percentile is not None else (default if default is not None else 0.0)
        for stream in streams:
            if stream.steps.empty:
                continue
            rec = _strategy(name, stream, histories[id(stream)], p)
            if rec is not None:
                if several:
                    rec.optimizer = stream.optimizer
                out.append(rec)
    return out


def save_recommendations(run: Run, recommendations: Sequence[Recommendation]) -> Path:
    """Write ``RUN/recommendation.json`` (``{"run": name, "recommendations": [...]}``) atomically."""
    return write_recommendations(run.path, run.name, [plain_json(r.to_dict()) for r in recommendations])
