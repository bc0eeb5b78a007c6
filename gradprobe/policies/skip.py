"""Skipping the update on a gradient spike, alone or composed with one clip policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from gradprobe.errors import GradprobeError
from gradprobe.policies.base import NAN, ClipResult, Decision, GlobalPolicy, Norms, Policy, State, push_ring
from gradprobe.policies.keys import count, positive
from gradprobe.policies.ops import Ops
from gradprobe.policies.replay import Replay


@dataclass(frozen=True)
class Skip(GlobalPolicy):
    """Skip the update when the norm spikes: ``skip:sigma=K[,window=W][,warmup=N]``.

    With ``mean`` and ``std`` (population) of the pre-clip global L2 norms of
    the last ``window`` steps that were not skipped (default 128)::

        skipped = n is not finite  or  (armed and n > mean + sigma * std)

    where ``armed`` means at least ``warmup`` norms are in the window (default:
    ``window``, i.e. a full window). A skipped step has scale 0 and its norm
    does not enter the window, so one spike cannot raise the bar for the next.
    How the optimizer step itself is prevented is the applier's job (see
    :mod:`gradprobe.pytorch.clip`): a zero gradient alone still lets
    momentum and weight decay move the parameters.

    Args:
      sigma: how many standard deviations above the mean count as a spike (> 0).
      window: how many recent norms the statistics cover (default 128, >= 2).
      warmup: norms needed before skipping can fire (default ``window``; 2..window).

    References:
      Chowdhery et al., PaLM: Scaling Language Modeling with Pathways, 2022
      (section 5.1 skips the batches around loss spikes); this policy applies
      that practice step by step, detecting the spike from the gradient norm.
    """

    name: ClassVar[str] = "skip"
    is_skip: ClassVar[bool] = True
    KEYS: ClassVar = (
        positive("sigma", required=True),
        count("window", 2, default=128),
        count("warmup", 2, default=None, default_text="window"),
    )
    sigma: float
    window: int = 128
    warmup: int | None = None

    def __post_init__(self) -> None:
        if self.warmup is None:
            object.__setattr__(self, "warmup", self.window)
        super().__post_init__()
        if self.warmup > self.window:
            raise GradprobeError(f"skip: warmup must be <= window ({self.window}) (got {self.warmup})")

    def init_state(self, ops: Ops) -> State:
        return {"history": ops.full(self.window, 0.0), "count": ops.const(0.0), "pos": ops.const(0.0)}

    def decide(self, ops: Ops, state: State, norms: Norms, active=True) -> tuple[Decision, State]:
        n = norms.l2
        history, filled = state["history"], state["count"]
        index = ops.arange(self.window)
        valid = index < filled
        size = ops.maximum(filled, 1.0)
        mean = ops.sum(ops.where(valid, history, 0.0)) / size
        deviation = ops.where(valid, history - mean, 0.0)
        std = ops.sqrt(ops.sum(deviation * deviation) / size)
        limit = mean + self.sigma * std
        armed = filled >= self.warmup
        skipped = ~ops.isfinite(n) | (armed & (n > limit))

        new_state = push_ring(ops, state, n, active & ~skipped, self.window)
        scale = ops.where(skipped, 0.0, 1.0)
        decision = Decision(ops.const(NAN), scale, ops.flag(False), skipped, ops.where(armed, limit, NAN))
        return decision, new_state


@dataclass(frozen=True)
class Composite(GlobalPolicy):
    """One clip policy composed with a skip policy: ``CLIP+skip:...``, e.g. ``zclip:z=2.5+skip:sigma=6``.

    The skip policy decides first, from the pre-clip global norm. On a skipped
    step every gradient is multiplied by 0 and the clip policy's state does
    not learn from the step; otherwise the clip policy applies as on its own.
    """

    name: ClassVar[str] = "compose"
    clip: Policy
    skip: Skip

    def __post_init__(self) -> None:
        if not isinstance(self.skip, Skip) or self.clip.is_skip or isinstance(self.clip, Composite):
            raise GradprobeError("compose one clip policy with one skip policy, e.g. zclip:z=2.5+skip:sigma=6")

    def __str__(self) -> str:
        return f"{self.clip}+{self.skip}"

    @property
    def needs_params(self) -> bool:  # type: ignore[override]
        return self.clip.needs_params

    @property
    def can_skip(self) -> bool:
        return True

    @property
    def uses_maxabs(self) -> bool:
        return isinstance(self.clip, GlobalPolicy) and self.clip.uses_maxabs

    @property
    def replay_inputs(self) -> frozenset[str]:
        return self.clip.replay_inputs

    def init_state(self, ops: Ops) -> State:
        return {"clip": self.clip.init_state(ops), "skip": self.skip.init_state(ops)}

    def decide(self, ops: Ops, state: State, norms: Norms, active=True) -> tuple[Decision, State]:
        if not isinstance(self.clip, GlobalPolicy):
            raise TypeError(f"{self.clip.name} does not decide from the global norm")
        s, skip_state = self.skip.decide(ops, state["skip"], norms, active)
        c, clip_state = self.clip.decide(ops, state["clip"], norms, active & ~s.skipped)
        decision = Decision(c.threshold, ops.where(s.skipped, 0.0, c.scale), c.clipped & ~s.skipped, s.skipped,
                            s.skip_threshold)
        return decision, {"clip": clip_state, "skip": skip_state}

    def apply(self, ops, state, g, active=True):
        if isinstance(self.clip, GlobalPolicy):
            return super().apply(ops, state, g, active)
        s, skip_state = self.skip.decide(ops, state["skip"], Norms(g.norm), active)
        r, grads, clip_state = self.clip.apply(ops, state["clip"], g, active & ~s.skipped)
        keep = ops.where(s.skipped, 0.0, 1.0)
        grads = ops.scale(grads, keep)
        outcome = ClipResult(g.norm, r.post_norm * keep, r.scale * keep, r.threshold, r.clipped & ~s.skipped,
                             s.skipped, s.skip_threshold)
        return outcome, grads, {"clip": clip_state, "skip": skip_state}

    def replay(self, global_norms, layer_norms=None, layer_maxabs=None, param_norms=None, numel=None, steps=None):
        if isinstance(self.clip, GlobalPolicy):
            return super().replay(global_norms, layer_norms, layer_maxabs, param_norms, numel, steps)
        skips = self.skip.replay(global_norms, steps=steps)
        clips = self.clip.replay(global_norms, layer_norms, layer_maxabs, param_norms, numel, steps)
        keep = np.where(skips.skipped, 0.0, 1.0)
        return Replay.build(
            str(self), steps, clips.norm, clips.threshold, clips.scale * keep, clips.post_norm * keep,
            clips.clipped & ~skips.skipped, skips.skipped, skips.skip_threshold, clips.evaluated, clips.exact,
        )


def compose(policies: list[Policy]) -> Policy:
    """One policy from the ``+``-separated parts of a spec: a single policy, or clip + skip."""
    if len(policies) == 1:
        return policies[0]
    skips = [p for p in policies if p.is_skip]
    clips = [p for p in policies if not p.is_skip]
    if len(policies) > 2 or len(skips) != 1:
        names = " and ".join(p.name for p in clips)
        what = f"{len(skips)} skip policies" if len(skips) > 1 else f"{len(clips)} clip policies ({names})"
        raise GradprobeError(
            f"cannot compose {what}: compose one clip policy with one skip policy, e.g. zclip:z=2.5+skip:sigma=6"
        )
    return Composite(clips[0], skips[0])
