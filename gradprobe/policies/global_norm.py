"""Clip policies that rescale all gradients together from the global norm: fixed, AutoClip, ZClip."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from gradprobe.policies.base import EPS, NAN, Decision, GlobalPolicy, Norms, State, push_ring
from gradprobe.policies.history import History, Suggestion, percentile, spec_number
from gradprobe.policies.keys import Key, count, positive
from gradprobe.policies.ops import Ops


def _rescale(ops: Ops, norm, clipped, target):
    """Scale that brings ``norm`` down to ``target`` where ``clipped``, else 1."""
    return ops.where(clipped, target / (norm + EPS), 1.0)


@dataclass(frozen=True)
class GlobalNorm(GlobalPolicy):
    """Clip the global gradient norm to a fixed maximum: ``global-norm:max=X[,norm=2|inf]``.

    With ``n`` the norm of all gradients taken together (L2 by default, or
    the largest absolute element with ``norm=inf``)::

        scale = max / (n + 1e-6)   if n > max
                1                  otherwise

    and every gradient is multiplied by ``scale``. This is
    ``torch.nn.utils.clip_grad_norm_`` (and ``tf.clip_by_global_norm`` for
    L2), computed on the device from the per-layer norms already measured.

    Args:
      max: the largest global norm allowed (> 0).
      norm: ``2`` (default) or ``inf``.

    References:
      Pascanu et al., On the difficulty of training recurrent neural networks, 2013.
    """

    name: ClassVar[str] = "global-norm"
    KEYS: ClassVar = (positive("max", required=True), Key("norm", kind="choice", choices=("2", "inf"), default="2"))
    strategy: ClassVar = "percentile"
    default_percentile: ClassVar = 95.0
    TUNE_PERCENTILES: ClassVar = (50.0, 90.0, 95.0, 99.0)
    # Fixed thresholds tune also tries: the value everyone types, and the classic recurrent-model
    # recipe's small one; percentiles of a history that already holds the damage can all be far above.
    TUNE_FIXED: ClassVar = (1.0, 0.25)
    max: float
    norm: str = "2"

    @classmethod
    def suggest(cls, history: History, p: float) -> Suggestion | None:
        value = percentile(history.global_norms, p)
        if not math.isfinite(value):
            return None
        why = (f"{p:g}th percentile of {history.global_norms.size} recorded pre-clip global norms{history.note}: "
               "caps the largest norms of that history.")
        return Suggestion(f"{cls.name}:max={spec_number(value)}", why)

    @classmethod
    def tune_candidates(cls, history: History) -> list[tuple[str, str]]:
        """The percentile thresholds, then each fixed one that lies below the largest recorded norm
        (above it, it would never clip: the same as no clipping)."""
        found = [(p, cls.suggest(history, p)) for p in cls.TUNE_PERCENTILES]
        candidates = [(f"{cls.name} p{p:g}", s.spec) for p, s in found if s is not None]
        largest = percentile(history.global_norms, 100.0)
        fixed = [m for m in cls.TUNE_FIXED if math.isfinite(largest) and m < largest]
        return candidates + [(f"{cls.name} {spec_number(m)}", f"{cls.name}:max={spec_number(m)}") for m in fixed]

    def torch_call(self) -> tuple[str, dict[str, float]]:
        return "clip_grad_norm_", {"max_norm": self.max, **({"norm_type": math.inf} if self.norm == "inf" else {})}

    def keras_setting(self) -> tuple[str, float] | None:
        return ("global_clipnorm", self.max) if self.norm == "2" else None

    @property
    def uses_maxabs(self) -> bool:
        return self.norm == "inf"

    def decide(self, ops: Ops, state: State, norms: Norms, active=True) -> tuple[Decision, State]:
        n = norms.inf if self.uses_maxabs else norms.l2
        clipped = n > self.max
        scale = _rescale(ops, n, clipped, self.max)
        return Decision(ops.const(self.max), scale, clipped, ops.flag(False), ops.const(NAN)), state


@dataclass(frozen=True)
class AutoClip(GlobalPolicy):
    """Clip to a percentile of the norms seen so far: ``autoclip:p=P[,warmup=N][,window=W]``.

    Each step appends the pre-clip global L2 norm ``n_t`` to the history, then::

        threshold_t = percentile(history, P)    (linear interpolation, as numpy)
        scale_t     = threshold_t / (n_t + 1e-6)  if n_t > threshold_t, else 1

    The history is bounded on the device: a ring buffer of the last ``window``
    norms (default 1000), so memory and per-step cost stay fixed; for runs of
    up to ``window`` steps it is the whole history, as in the paper. During
    the first ``warmup`` steps (default 0) norms enter the history but nothing
    is clipped and no threshold is in force (recorded as NaN). Non-finite
    norms never enter the history; a step skipped by a composed skip policy
    does not either.

    Args:
      p: the percentile, in (0, 100]; the paper recommends 10.
      warmup: steps that only collect history (default 0).
      window: how many recent norms the percentile is taken over (default 1000).

    References:
      Seetharaman et al., AutoClip: Adaptive Gradient Clipping for Source
      Separation Networks, 2020.
    """

    name: ClassVar[str] = "autoclip"
    KEYS: ClassVar = (
        Key("p", required=True, low=0.0, low_open=True, high=100.0),
        count("warmup", 0, default=0),
        count("window", 1, default=1000),
    )
    strategy: ClassVar = "autoclip"
    default_percentile: ClassVar = 10.0  # the paper's
    p: float
    warmup: int = 0
    window: int = 1000

    @classmethod
    def suggest(cls, history: History, p: float) -> Suggestion:
        why = (f"AutoClip (Seetharaman et al., 2020): clip to the {p:g}th percentile of the norms seen so far; "
               "follows the norm as it drifts.")
        return Suggestion(f"{cls.name}:p={p:g}", why)

    @classmethod
    def tune_candidates(cls, history: History) -> list[tuple[str, str]]:
        return [("AutoClip", cls.suggest(history, cls.default_percentile).spec)]

    def init_state(self, ops: Ops) -> State:
        return {"history": ops.full(self.window, float("inf")), "count": ops.const(0.0),
                "pos": ops.const(0.0), "seen": ops.const(0.0)}

    def decide(self, ops: Ops, state: State, norms: Norms, active=True) -> tuple[Decision, State]:
        n = norms.l2
        add = active & ops.isfinite(n)
        ring = push_ring(ops, state, n, add, self.window)
        history, filled = ring["history"], ring["count"]
        seen = ops.where(add, ops.minimum(state["seen"] + 1.0, self.warmup + 1.0), state["seen"])
        new_state = {**ring, "seen": seen}

        ordered = ops.sort(history)  # unfilled slots hold +inf and sort last
        last = ops.maximum(filled - 1.0, 0.0)
        rank = last * (self.p / 100.0)
        lo = ops.floor(rank)
        hi = ops.minimum(lo + 1.0, last)
        below, above = ops.take(ordered, lo), ops.take(ordered, hi)
        percentile = below + (rank - lo) * (above - below)

        armed = seen > self.warmup
        clipped = armed & (n > percentile)
        threshold = ops.where(armed, percentile, NAN)
        scale = _rescale(ops, n, clipped, percentile)
        return Decision(threshold, scale, clipped, ops.flag(False), ops.const(NAN)), new_state


@dataclass(frozen=True)
class ZClip(GlobalPolicy):
    """Z-score clipping against running statistics of the norm: ``zclip[:z=Z][,alpha=A][,warmup=N][,mode=M]``.

    The first ``warmup`` finite norms (default 25) are only collected: their
    mean and population variance initialise ``mu`` and ``var`` (computed
    online, Welford's method). Nothing is clipped meanwhile (threshold NaN).
    Afterwards, at each step with pre-clip global L2 norm ``n``::

        sigma     = sqrt(var)
        threshold = mu + z * sigma                    (fires when the z-score > z)
        n*        = mu + z**2 * sigma**2 / (n - mu)   mode=reciprocal (default, the paper's)
                    threshold                         mode=threshold
        n*        = n                                 if n <= threshold
        scale     = n* / (n + 1e-6)                   if n > threshold, else 1
        mu'       = alpha * mu  + (1 - alpha) * n*
        var'      = alpha * var + (1 - alpha) * (n* - mu')**2

    Reciprocal clipping ``mu + (z**2 / z_t) * sigma`` with ``z_t = (n - mu) /
    sigma`` clips stronger outliers harder (their clipped norm lies below the
    threshold); ``mode=threshold`` clips to ``mu + z * sigma`` itself. The
    statistics are updated with the clipped norm ``n*``. Non-finite norms and
    steps skipped by a composed skip policy leave the statistics unchanged.

    Args:
      z: z-score threshold (default 2.5).
      alpha: EMA smoothing factor in (0, 1) (default 0.97).
      warmup: steps used to initialise the statistics (default 25, >= 1).
      mode: ``reciprocal`` (default) or ``threshold``.

    References:
      Kumar et al., ZClip: Adaptive Spike Mitigation for LLM Pre-Training, 2025.
    """

    name: ClassVar[str] = "zclip"
    KEYS: ClassVar = (
        positive("z", default=2.5),
        Key("alpha", default=0.97, low=0.0, low_open=True, high=1.0, high_open=True),
        count("warmup", 1, default=25),
        Key("mode", kind="choice", choices=("reciprocal", "threshold"), default="reciprocal"),
    )
    strategy: ClassVar = "zclip"
    z: float = 2.5
    alpha: float = 0.97
    warmup: int = 25
    mode: str = "reciprocal"

    @classmethod
    def suggest(cls, history: History, p: float) -> Suggestion:
        why = ("ZClip (Kumar et al., 2025): clip norms more than 2.5 running standard deviations above the "
               "running mean (EMA, alpha 0.97); aimed at spikes.")
        return Suggestion(f"{cls.name}:z={cls.z:g},alpha={cls.alpha:g}", why)

    @classmethod
    def tune_candidates(cls, history: History) -> list[tuple[str, str]]:
        return [("ZClip", cls.suggest(history, 0.0).spec)]

    def init_state(self, ops: Ops) -> State:
        zero = ops.const(0.0)
        return {"mean": zero, "var": zero, "m2": zero, "seen": zero}

    def decide(self, ops: Ops, state: State, norms: Norms, active=True) -> tuple[Decision, State]:
        n = norms.l2
        mean, var, m2, seen = state["mean"], state["var"], state["m2"], state["seen"]
        armed = seen >= self.warmup
        sigma = ops.sqrt(var)
        limit = mean + self.z * sigma
        clipped = armed & (n > limit)
        if self.mode == "reciprocal":
            target = mean + (self.z * self.z) * var / ops.where(clipped, n - mean, 1.0)
        else:
            target = limit
        clipped_norm = ops.where(clipped, target, n)
        scale = _rescale(ops, n, clipped, target)

        ema_mean = self.alpha * mean + (1.0 - self.alpha) * clipped_norm
        deviation = clipped_norm - ema_mean
        ema_var = self.alpha * var + (1.0 - self.alpha) * deviation * deviation
        k = seen + 1.0
        welford_mean = mean + (n - mean) / k
        welford_m2 = m2 + (n - mean) * (n - welford_mean)
        warm_var = ops.where(k >= self.warmup, welford_m2 / k, var)

        update = active & ops.isfinite(n)
        new_state = {
            "mean": ops.where(update, ops.where(armed, ema_mean, welford_mean), mean),
            "var": ops.where(update, ops.where(armed, ema_var, warm_var), var),
            "m2": ops.where(update & ~armed, welford_m2, m2),
            "seen": ops.where(update & ~armed, k, seen),
        }
        threshold = ops.where(armed, limit, NAN)
        return Decision(threshold, scale, clipped, ops.flag(False), ops.const(NAN)), new_state
