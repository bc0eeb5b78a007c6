"""What every clip policy is: a small immutable object with explicit state and one job.

A policy is configured by its spec keys (frozen dataclass fields) and keeps
everything that changes from step to step in a *state*: a dict of float32
arrays created by :meth:`Policy.init_state` and returned, updated, by every
step. Nothing else is remembered, so the same policy object can drive a live
training loop (torch tensors on the device), a numpy replay of a recorded run,
or several optimizers each with its own state.

Two families share that interface:

* :class:`GlobalPolicy` decides from the global gradient norm alone
  (``global-norm``, ``autoclip``, ``zclip``, ``skip`` and their composition):
  :meth:`GlobalPolicy.decide` gives one scale for every gradient. The replay
  runs the very same ``decide`` on the recorded norms, so it matches the live
  policy step for step.
* :class:`LayerPolicy` transforms each parameter's gradient on its own
  (``layer-norm``, ``value``, ``scaled-value``, ``sign``, ``agc``); stateless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Sequence

import numpy as np

from gradprobe.errors import GradprobeError
from gradprobe.policies.history import History, Suggestion
from gradprobe.policies.keys import Key, format_value
from gradprobe.policies.ops import Array, NumpyOps, Ops
from gradprobe.policies.replay import Replay, layer_inputs

State = dict[str, Any]

# Guard added to a norm before dividing by it, as torch.nn.utils.clip_grad_norm_ does:
# scale = max / (norm + 1e-6).
EPS = 1e-6
NAN = math.nan


class Norms(NamedTuple):
    """The global norms of one step's gradients: L2, and L-inf when a policy needs it."""

    l2: Array
    inf: Array | None = None


class Decision(NamedTuple):
    """A global policy's verdict for one step (scalars).

    ``threshold``: the norm above which clipping fires (NaN: none in force yet).
    ``scale``: factor applied to every gradient, in [0, 1] (0 on a skipped step).
    ``clipped`` / ``skipped``: booleans. ``skip_threshold``: the norm above
    which a skip policy skips (NaN: no skip policy, or not armed yet).
    """

    threshold: Array
    scale: Array
    clipped: Array
    skipped: Array
    skip_threshold: Array


class ClipResult(NamedTuple):
    """What applying a policy did to one step's gradients (scalars, on the gradients' device).

    ``norm``: global L2 norm before clipping; ``post_norm``: after (0 on a
    skipped step); ``scale``: ``post_norm / norm`` (the factor itself for
    global policies); the other fields as in :class:`Decision`.
    """

    norm: Array
    post_norm: Array
    scale: Array
    threshold: Array
    clipped: Array
    skipped: Array
    skip_threshold: Array


@dataclass
class Gradients:
    """One step's gradients as a policy sees them.

    ``grads``: the gradient arrays (unscaled: after AMP unscaling);
    ``layer_norms``: their L2 norms, float32 vector (computed once, by the
    recorder); ``norm``: the global L2 norm; ``params``: the parameters, in
    the same order (needed by ``agc`` only).
    """

    grads: list[Array]
    layer_norms: Array
    norm: Array
    params: list[Array] | None = None


class Policy:
    """Base of every clip policy: spec keys, canonical spec text, state, application, replay, and what
    the policy's consumers ask of it (its suggestion from a recorded run, its tune candidates, the
    framework settings that carry it out).

    ``strategy`` names the policy among ``gradprobe recommend``'s strategies (None: never
    recommended), with ``default_percentile`` the percentile its suggestion reads.
    """

    name: ClassVar[str]
    KEYS: ClassVar[tuple[Key, ...]] = ()
    is_skip: ClassVar[bool] = False
    needs_params: ClassVar[bool] = False
    strategy: ClassVar[str | None] = None
    default_percentile: ClassVar[float | None] = None

    def __post_init__(self) -> None:
        for key in self.KEYS:
            key.check(self.name, getattr(self, key.attr))

    def __str__(self) -> str:
        if not self.KEYS:
            return self.name
        values = ",".join(f"{k.name}={format_value(getattr(self, k.attr))}" for k in self.KEYS)
        return f"{self.name}:{values}"

    @property
    def replay_inputs(self) -> frozenset[str]:
        """The per-layer :meth:`replay` arguments this policy needs besides the global norms."""
        return frozenset()

    @property
    def can_skip(self) -> bool:
        """Whether the policy may skip an update (a skip policy, alone or composed)."""
        return self.is_skip

    @classmethod
    def suggest(cls, history: History, p: float) -> Suggestion | None:
        """A spec of this policy for the recorded ``history`` (``p``: the percentile to read), or None."""
        return None

    @classmethod
    def tune_candidates(cls, history: History) -> list[tuple[str, str]]:
        """The ``(label, spec)`` pairs of this policy that ``gradprobe tune`` tries on ``history``."""
        return []

    def torch_call(self) -> tuple[str, dict[str, float]] | None:
        """The ``torch.nn.utils`` function that carries out this policy and its keyword arguments, or
        None (a ``gradprobe.clipper`` carries it out)."""
        return None

    def keras_setting(self) -> tuple[str, float] | None:
        """The Keras optimizer argument that carries out this policy, with its value, or None."""
        return None

    def init_state(self, ops: Ops) -> State:
        """The state before the first step (arrays made by ``ops``)."""
        return {}

    def apply(self, ops: Ops, state: State, g: Gradients, active: Any = True) -> tuple[ClipResult, list, State]:
        """Clip one step's gradients; return what happened, the gradients and the new state.

        ``active`` False (a scalar boolean) means the step is being skipped by
        a composed skip policy: the state must not learn from it.
        """
        raise NotImplementedError

    def replay(
        self,
        global_norms: Sequence[float] | np.ndarray,
        layer_norms: np.ndarray | None = None,
        layer_maxabs: np.ndarray | None = None,
        param_norms: np.ndarray | None = None,
        numel: Sequence[int] | None = None,
        steps: Sequence[int] | None = None,
    ) -> Replay:
        """What this policy would have done on a recorded history of pre-clip norms.

        ``global_norms``: one pre-clip L2 norm per step. Per-layer policies also
        need ``layer_norms`` / ``layer_maxabs`` / ``param_norms`` (shape steps x
        layers, NaN rows for steps without layer statistics) and ``numel``
        (elements per layer). ``steps`` labels the rows (default 0..n-1).
        """
        raise NotImplementedError


def result(g: Gradients, d: Decision, post_norm: Array, scale: Array) -> ClipResult:
    """A :class:`ClipResult` from a decision and the measured effect."""
    return ClipResult(g.norm, post_norm, scale, d.threshold, d.clipped, d.skipped, d.skip_threshold)


def recorded_threshold(ops: Ops, outcome: ClipResult) -> Array:
    """The threshold a run records for a step: the clip threshold, or the skip threshold where no clip
    threshold is in force (a skip policy alone, or before a composed clip policy is armed)."""
    return ops.where(ops.isnan(outcome.threshold), outcome.skip_threshold, outcome.threshold)


def push_ring(ops: Ops, state: State, value: Array, add: Array, window: int) -> State:
    """``state``'s ring of the last ``window`` values (``history``, ``count`` filled, next ``pos``)
    with ``value`` written where ``add`` is true; the ring is unchanged where it is false."""
    pos, filled = state["pos"], state["count"]
    next_pos = ops.where(pos + 1.0 >= window, 0.0, pos + 1.0)
    return {
        "history": ops.where((ops.arange(window) == pos) & add, value, state["history"]),
        "count": ops.where(add, ops.minimum(filled + 1.0, float(window)), filled),
        "pos": ops.where(add, next_pos, pos),
    }


class GlobalPolicy(Policy):
    """A policy that multiplies every gradient by one scale decided from the global norm."""

    @property
    def uses_maxabs(self) -> bool:
        """True when :meth:`decide` reads the global L-inf norm (``Norms.inf``)."""
        return False

    @property
    def replay_inputs(self) -> frozenset[str]:
        return frozenset({"layer_maxabs"}) if self.uses_maxabs else frozenset()

    def decide(self, ops: Ops, state: State, norms: Norms, active: Any = True) -> tuple[Decision, State]:
        """The scale for this step and the updated state; pure array math, no host reads."""
        raise NotImplementedError

    def apply(self, ops, state, g, active=True):
        inf = ops.max(ops.norms(g.grads, math.inf)) if self.uses_maxabs else None
        d, state = self.decide(ops, state, Norms(g.norm, inf), active)
        grads = ops.scale(g.grads, d.scale)
        return result(g, d, g.norm * d.scale, d.scale), grads, state

    def replay(self, global_norms, layer_norms=None, layer_maxabs=None, param_norms=None, numel=None, steps=None):
        l2 = np.asarray(global_norms, dtype=np.float32)
        n = len(l2)
        inf = np.full(n, np.nan, dtype=np.float32)
        evaluated = np.ones(n, dtype=bool)
        if self.uses_maxabs:
            if layer_maxabs is None:
                raise GradprobeError(f"{self}: replay needs the per-layer max-abs values (layer_maxabs)")
            maxabs = np.asarray(layer_maxabs, dtype=np.float32)
            if maxabs.ndim != 2 or maxabs.shape[0] != n:
                raise GradprobeError(f"{self}: layer_maxabs must have shape (steps={n}, layers), got {maxabs.shape}")
            evaluated = ~np.isnan(maxabs).all(axis=1)
            if evaluated.any():
                inf[evaluated] = np.nanmax(maxabs[evaluated], axis=1)
        ops = NumpyOps()
        state = self.init_state(ops)
        rows = []
        with np.errstate(all="ignore"):
            for t in range(n):
                d, state = self.decide(ops, state, Norms(l2[t], inf[t]))
                rows.append((d.threshold, d.scale, d.clipped, d.skipped, d.skip_threshold))
            columns = list(zip(*rows)) if rows else [[]] * 5
            threshold, scale, clipped, skipped, skip_threshold = (np.asarray(c, dtype=np.float32) for c in columns)
            post = l2 * scale
        return Replay.build(str(self), steps, l2, threshold, scale, post, clipped, skipped, skip_threshold,
                            evaluated, exact=True)


class LayerPolicy(Policy):
    """A stateless policy that transforms each parameter's gradient on its own."""

    replay_exact: ClassVar[bool] = False
    REPLAY_INPUTS: ClassVar[frozenset[str]] = frozenset({"layer_norms"})

    @property
    def replay_inputs(self) -> frozenset[str]:
        return self.REPLAY_INPUTS

    def threshold(self) -> float:
        """The policy's threshold as recorded per step (its main key)."""
        raise NotImplementedError

    def transform(self, ops: Ops, g: Gradients) -> tuple[list, Array, Array]:
        """Clip each gradient; return the gradients, their post-clip L2 norms and whether any changed."""
        raise NotImplementedError

    def estimate(self, ops: Ops, norms: Array, maxabs: Array, param_norms: Array,
                 numel: np.ndarray) -> tuple[Array, Array]:
        """From one step's per-layer statistics: post-clip layer norms and whether any layer is clipped.

        Exact when ``replay_exact``; otherwise an estimate described in the
        policy's docstring.
        """
        raise NotImplementedError

    def apply(self, ops, state, g, active=True):
        grads, post, clipped = self.transform(ops, g)
        post_norm = ops.global_norm(post)
        scale = ops.where(g.norm > 0, post_norm / ops.maximum(g.norm, EPS), 1.0)
        d = Decision(ops.const(self.threshold()), scale, clipped, ops.flag(False), ops.const(NAN))
        return result(g, d, post_norm, scale), grads, state

    def replay(self, global_norms, layer_norms=None, layer_maxabs=None, param_norms=None, numel=None, steps=None):
        l2 = np.asarray(global_norms, dtype=np.float32)
        norms, maxabs, pnorms, sizes, evaluated = layer_inputs(str(self), self.replay_inputs, len(l2), layer_norms,
                                                                layer_maxabs, param_norms, numel)
        n = len(l2)
        post = np.full(n, np.nan, dtype=np.float32)
        clipped = np.zeros(n, dtype=bool)
        ops = NumpyOps()
        with np.errstate(all="ignore"):
            for t in np.flatnonzero(evaluated):
                layer_post, any_clipped = self.estimate(ops, norms[t], maxabs[t], pnorms[t], sizes)
                post[t] = ops.global_norm(layer_post)
                clipped[t] = any_clipped
            scale = np.where(l2 > 0, post / np.maximum(l2, EPS), 1.0)
        return Replay.build(str(self), steps, l2, np.full(n, self.threshold()), scale, post, clipped,
                            np.zeros(n, dtype=bool), np.full(n, np.nan), evaluated, exact=self.replay_exact)
