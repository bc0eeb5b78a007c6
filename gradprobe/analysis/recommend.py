"""Clip recommendations: a spec per strategy, with a what-if replayed on the recorded steps.

Each strategy turns the recorded history of one optimizer into a clip spec
(the grammar of :mod:`gradprobe.policies`); the spec is then parsed and
replayed with the policy's own math (:meth:`gradprobe.policies.Policy.replay`),
the very code that clips live, so the what-if (fraction of steps clipped,
mean and minimum scale) is what that spec would have done on these steps.

Strategies (``P`` is ``--percentile``):

* ``percentile`` (default P = 95): ``global-norm:max=T`` with T the P-th
  percentile of the finite pre-clip global norms. 95 clips the largest 5% of
  steps, the outliers, and leaves typical steps alone (clipping on 90%+ of the
  steps is flagged as saturation: a learning-rate cut).
* ``autoclip`` (default P = 10, the paper's): ``autoclip:p=P``, the
  percentile of the norms seen so far, adapting as the norm drifts.
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
``--every`` steps). Per-layer statistics are as recorded, after any clipping
the run itself did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gradprobe.analysis.findings import Finding, plain_json
from gradprobe.analysis.robust import quiet
from gradprobe.analysis.streams import Stream
from gradprobe.errors import GradprobeError
from gradprobe.policies import GlobalPolicy, Replay, parse_spec
from gradprobe.store import Run
from gradprobe.recommendation_file import RECOMMENDATION_FILE
from gradprobe.store.writer import write_json_atomic

STRATEGIES = ("percentile", "autoclip", "zclip", "agc", "value", "layer")
DEFAULT_PERCENTILES = {"percentile": 95.0, "autoclip": 10.0, "agc": 95.0, "value": 95.0, "layer": 95.0}
ZCLIP_SPEC = "zclip:z=2.5,alpha=0.97"
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
        """Steps and global-norm thresholds, for drawing over the global norm (global policies only)."""
        if self.strategy not in ("percentile", "autoclip", "zclip") or (self.optimizer or 0) != optimizer:
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


def round_sig(value: float, digits: int = 3) -> float:
    """``value`` rounded to ``digits`` significant digits."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - int(math.floor(math.log10(abs(value)))))


def _spec_number(value: float) -> str:
    return f"{round_sig(value):g}"


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


def _history(stream: Stream, findings: Sequence[Finding]) -> tuple[np.ndarray, str]:
    """Finite pre-clip global norms of the applied steps (before any explosion or NaN)."""
    steps = stream.steps
    keep, note = _before(steps["step"].to_numpy(), ~steps["skipped"].to_numpy(), healthy_end(stream, findings))
    norms = steps["global_norm"].to_numpy(dtype=np.float64)[keep]
    return norms[np.isfinite(norms)], note


def _layer_rows(stream: Stream, findings: Sequence[Finding]) -> tuple[np.ndarray, str]:
    """The sampled rows to derive per-layer thresholds from (before any explosion or NaN)."""
    return _before(stream.sampled, np.ones(len(stream.sampled), bool), healthy_end(stream, findings))


def _layer_grid(stream: Stream, column: str) -> np.ndarray:
    return stream.matrix(column).astype(np.float32)


def _replay(stream: Stream, spec: str) -> Replay:
    policy = parse_spec(spec)
    if isinstance(policy, GlobalPolicy) and not policy.replay_inputs:
        steps = stream.steps
        return policy.replay(steps["global_norm"].to_numpy(dtype=np.float32), steps=steps["step"].to_numpy())
    at_sampled = stream.steps.set_index("step")["global_norm"].reindex(stream.sampled)
    return policy.replay(
        at_sampled.to_numpy(dtype=np.float32), steps=stream.sampled,
        layer_norms=_layer_grid(stream, "norm"), layer_maxabs=_layer_grid(stream, "maxabs"),
        param_norms=_layer_grid(stream, "param_norm"), numel=stream.numel,
    )


def _percentile(values: np.ndarray, p: float) -> float:
    values = values[np.isfinite(values) & (values > 0)]
    return float(np.percentile(values, p)) if values.size else float("nan")


def _per_layer(stream: Stream, threshold: float) -> list[dict[str, Any]]:
    norms = stream.matrix("norm")
    known = np.isfinite(norms).sum(axis=0)
    fractions = np.where(known > 0, (norms > threshold).sum(axis=0) / np.maximum(known, 1), 0.0)
    p95 = quiet(np.nanpercentile, norms, 95, axis=0)
    order = [j for j in np.argsort(-fractions, kind="stable") if fractions[j] > 0][:MAX_LAYERS_LISTED]
    return [{"layer": stream.names[j], "clipped_fraction": float(fractions[j]), "p95_norm": float(p95[j])}
            for j in order]


def _strategy(name: str, stream: Stream, findings: Sequence[Finding], p: float) -> Recommendation | None:
    if name == "percentile":
        history, note = _history(stream, findings)
        value = _percentile(history, p)
        if not math.isfinite(value):
            return None
        spec = f"global-norm:max={_spec_number(value)}"
        why = (f"{p:g}th percentile of {history.size} recorded pre-clip global norms{note}: clips the largest "
               f"{100 - p:g}% of steps, leaves typical steps untouched.")
        return Recommendation(name, spec, why, _replay(stream, spec))
    if name == "autoclip":
        spec = f"autoclip:p={p:g}"
        why = (f"AutoClip (Seetharaman et al., 2020): clip to the {p:g}th percentile of the norms seen so far; "
               "follows the norm as it drifts.")
        return Recommendation(name, spec, why, _replay(stream, spec))
    if name == "zclip":
        why = ("ZClip (Kumar et al., 2025): clip norms more than 2.5 running standard deviations above the "
               "running mean (EMA, alpha 0.97); aimed at spikes.")
        return Recommendation(name, ZCLIP_SPEC, why, _replay(stream, ZCLIP_SPEC))
    if not len(stream.sampled):
        return None
    rows, note = _layer_rows(stream, findings)
    if name == "agc":
        floor = parse_spec("agc:lambda=1").eps
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = stream.matrix("norm")[rows] / np.maximum(stream.matrix("param_norm")[rows], floor)
        value = _percentile(quiet(np.nanmax, ratios, axis=1), p)
        if not math.isfinite(value):
            return None
        spec = f"agc:lambda={_spec_number(value)}"
        why = (f"AGC (Brock et al., 2021): lambda at the {p:g}th percentile of each sampled step's largest "
               f"gradient/weight norm ratio{note}; what-if estimated with each parameter as one unit.")
        return Recommendation(name, spec, why, _replay(stream, spec))
    if name == "value":
        value = _percentile(quiet(np.nanmax, stream.matrix("maxabs")[rows], axis=1), p)
        if not math.isfinite(value):
            return None
        spec = f"value:max={_spec_number(value)}"
        why = (f"{p:g}th percentile of each sampled step's largest gradient element{note}; what-if post-clip "
               "norm is an upper bound.")
        return Recommendation(name, spec, why, _replay(stream, spec))
    value = _percentile(quiet(np.nanmax, stream.matrix("norm")[rows], axis=1), p)
    if not math.isfinite(value):
        return None
    spec = f"layer-norm:max={_spec_number(value)}"
    why = (f"{p:g}th percentile of each sampled step's largest per-parameter norm{note}: bounds every layer "
           "separately, so one layer cannot drown the others.")
    return Recommendation(name, spec, why, _replay(stream, spec), per_layer=_per_layer(stream, round_sig(value)))


def recommend(streams: Sequence[Stream], findings: Sequence[Finding] = (), strategies: Sequence[str] = STRATEGIES,
              percentile: float | None = None) -> list[Recommendation]:
    """One recommendation per strategy (and per optimizer when there are several), in strategy order.

    ``findings`` (from :func:`~gradprobe.analysis.diagnose`) let ``percentile``
    use only the steps before an explosion or non-finite gradients.
    ``percentile`` overrides each strategy's default P.
    """
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise GradprobeError(f"unknown strategy {unknown[0]!r}: choose from {', '.join(STRATEGIES)}")
    if percentile is not None and not 0 < percentile <= 100:
        raise GradprobeError(f"--percentile must be in (0, 100], got {percentile:g}")
    out = []
    several = len(streams) > 1
    for name in strategies:
        p = percentile if percentile is not None else DEFAULT_PERCENTILES.get(name, 0.0)
        for stream in streams:
            if stream.steps.empty:
                continue
            rec = _strategy(name, stream, findings, p)
            if rec is not None:
                if several:
                    rec.optimizer = stream.optimizer
                out.append(rec)
    return out


def save_recommendations(run: Run, recommendations: Sequence[Recommendation]) -> Path:
    """Write ``RUN/recommendation.json`` (``{"run": name, "recommendations": [...]}``) atomically."""
    path = run.path / RECOMMENDATION_FILE
    document = {"run": run.name, "recommendations": [plain_json(r.to_dict()) for r in recommendations]}
    try:
        write_json_atomic(path, document)
    except OSError as exc:
        raise GradprobeError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
