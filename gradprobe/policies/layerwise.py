"""Clip policies that treat each parameter's gradient on its own: per-layer norm, value, sign, AGC."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np

from gradprobe.errors import GradprobeError
from gradprobe.policies.base import EPS, Gradients, LayerPolicy
from gradprobe.policies.history import History, Suggestion, round_sig, spec_number
from gradprobe.policies.keys import positive
from gradprobe.policies.ops import Array, Ops


@dataclass(frozen=True)
class LayerNorm(LayerPolicy):
    """Clip each parameter's gradient norm on its own: ``layer-norm:max=X``.

    For each parameter gradient ``g_i`` with L2 norm ``n_i``::

        g_i <- g_i * max / (n_i + 1e-6)   if n_i > max, else unchanged

    It reuses the per-layer norms already measured (no extra pass over the
    gradients), and its replay from recorded per-layer norms is exact.

    Args:
      max: the largest L2 norm allowed for any single parameter's gradient (> 0).
    """

    name: ClassVar[str] = "layer-norm"
    KEYS: ClassVar = (positive("max", required=True),)
    replay_exact: ClassVar[bool] = True
    strategy: ClassVar = "layer"
    default_percentile: ClassVar = 95.0
    max: float

    @classmethod
    def suggest(cls, history: History, p: float) -> Suggestion | None:
        value = history.largest(history.layer_norms, p)
        if not math.isfinite(value):
            return None
        why = (f"{p:g}th percentile of each sampled step's largest per-parameter norm{history.layer_note}: bounds "
               "every layer separately, so one layer cannot drown the others.")
        return Suggestion(f"{cls.name}:max={spec_number(value)}", why, layer_threshold=round_sig(value))

    def keras_setting(self) -> tuple[str, float]:
        return "clipnorm", self.max

    def threshold(self) -> float:
        return self.max

    def _scales(self, ops: Ops, norms: Array) -> Array:
        return ops.where(norms > self.max, self.max / (norms + EPS), 1.0)

    def transform(self, ops: Ops, g: Gradients):
        scales = self._scales(ops, g.layer_norms)
        return ops.scale_each(g.grads, scales), g.layer_norms * scales, ops.any(g.layer_norms > self.max)

    def estimate(self, ops, norms, maxabs, param_norms, numel):
        return norms * self._scales(ops, norms), ops.any(norms > self.max)


class _Clamp(LayerPolicy):
    """Element-wise clamping to ``[-b_i, b_i]`` with a bound per parameter."""

    REPLAY_INPUTS: ClassVar = frozenset({"layer_norms", "layer_maxabs", "numel"})

    def bounds(self, numel: Sequence[int]) -> list[float]:
        """The clamp bound of each parameter, from its element count."""
        raise NotImplementedError

    def transform(self, ops: Ops, g: Gradients):
        grads = ops.clamp_each(g.grads, self.bounds([ops.numel(x) for x in g.grads]))
        post = ops.norms(grads, 2.0)
        return grads, post, ops.any(post < g.layer_norms)

    def estimate(self, ops, norms, maxabs, param_norms, numel):
        bounds = np.asarray(self.bounds([int(n) for n in numel]), dtype=np.float32)
        bound_norms = bounds * np.sqrt(np.asarray(numel, dtype=np.float32))
        return ops.minimum(norms, bound_norms), ops.any(maxabs > bounds)


@dataclass(frozen=True)
class Value(_Clamp):
    """Clip every gradient element to ``[-max, max]``: ``value:max=X``.

    ::

        g <- clip(g, -max, max)      element-wise

    Live, ``clipped`` means the clamp changed some parameter's gradient norm.
    Replay from recorded statistics: whether a step clips is exact (some
    layer's max-abs exceeds ``max``); the post-clip norm is an upper bound,
    ``sqrt(sum_i min(n_i**2, numel_i * max**2))``, because the recorded
    summaries do not say how many elements exceed the bound.

    Args:
      max: the largest absolute value allowed for any gradient element (> 0).
    """

    name: ClassVar[str] = "value"
    KEYS: ClassVar = (positive("max", required=True),)
    strategy: ClassVar = "value"
    default_percentile: ClassVar = 95.0
    max: float

    @classmethod
    def suggest(cls, history: History, p: float) -> Suggestion | None:
        value = history.largest(history.layer_maxabs, p)
        if not math.isfinite(value):
            return None
        why = (f"{p:g}th percentile of each sampled step's largest gradient element{history.layer_note}; what-if "
               "post-clip norm is an upper bound.")
        return Suggestion(f"{cls.name}:max={spec_number(value)}", why)

    def torch_call(self) -> tuple[str, dict[str, float]]:
        return "clip_grad_value_", {"clip_value": self.max}

    def keras_setting(self) -> tuple[str, float]:
        return "clipvalue", self.max

    def threshold(self) -> float:
        return self.max

    def bounds(self, numel):
        return [self.max] * len(numel)


@dataclass(frozen=True)
class ScaledValue(_Clamp):
    """Clip elements to a bound shrinking with the parameter's size: ``scaled-value:c=X``.

    For a parameter with ``n`` elements::

        g <- clip(g, -c / sqrt(n), c / sqrt(n))      element-wise

    so a gradient whose elements all sit at the bound has L2 norm ``c``
    whatever the parameter's size. Replay as for ``value`` (exact clip
    decision, upper-bound post-clip norm).

    Args:
      c: the bound for a one-element parameter (> 0).
    """

    name: ClassVar[str] = "scaled-value"
    KEYS: ClassVar = (positive("c", required=True),)
    c: float

    def threshold(self) -> float:
        return self.c

    def bounds(self, numel):
        return [self.c / math.sqrt(max(int(n), 1)) for n in numel]


@dataclass(frozen=True)
class Sign(LayerPolicy):
    """Replace a too-large gradient by its scaled sign: ``sign:max=X``.

    For each parameter gradient ``g_i`` with L2 norm ``n_i``::

        g_i <- max * sign(g_i)   if n_i > max, else unchanged

    The clipped gradient keeps only each element's direction; its norm is
    ``max * sqrt(k)`` for ``k`` non-zero elements, so for large tensors it can
    exceed the original. Replay: whether a step clips is exact; the post-clip
    norm assumes no element is exactly zero (an upper bound).

    Args:
      max: the per-parameter norm above which the sign form is used (> 0).
    """

    name: ClassVar[str] = "sign"
    KEYS: ClassVar = (positive("max", required=True),)
    REPLAY_INPUTS: ClassVar = frozenset({"layer_norms", "numel"})
    max: float

    def threshold(self) -> float:
        return self.max

    def transform(self, ops: Ops, g: Gradients):
        over = g.layer_norms > self.max
        grads = ops.sign_where(g.grads, over, self.max)
        return grads, ops.norms(grads, 2.0), ops.any(over)

    def estimate(self, ops, norms, maxabs, param_norms, numel):
        sign_norms = self.max * np.sqrt(np.asarray(numel, dtype=np.float32))
        return ops.where(norms > self.max, sign_norms, norms), ops.any(norms > self.max)


@dataclass(frozen=True)
class AGC(LayerPolicy):
    """Unit-wise adaptive gradient clipping: ``agc:lambda=L[,eps=E]``.

    For every unit ``u`` (one output unit: a row of a PyTorch weight, dim 0;
    the last axis of a Keras kernel; each element of a bias), with ``G_u`` its
    gradient and ``W_u`` its weights, norms taken over the unit's elements::

        bound_u = lambda * max(||W_u||, eps)
        G_u <- G_u * bound_u / max(||G_u||, 1e-6)   if ||G_u|| > bound_u, else unchanged

    The gradient may be at most ``lambda`` times as large as the weights it
    updates, so the threshold adapts to each unit's scale. ``eps`` keeps
    zero-initialised weights (biases) from freezing. The paper leaves the
    final classifier layer unclipped; this policy clips every parameter.
    Replay from recorded statistics is an estimate that treats each whole
    parameter as one unit (only per-parameter norms are recorded).

    Args:
      lambda: the clipping ratio (> 0); the paper uses 0.01 to 0.16,
        smaller for larger batches.
      eps: the smallest weight norm used (default 1e-3).

    References:
      Brock et al., High-Performance Large-Scale Image Recognition Without
      Normalization, 2021.
    """

    name: ClassVar[str] = "agc"
    KEYS: ClassVar = (positive("lambda", required=True, field="lam"), positive("eps", default=1e-3))
    REPLAY_INPUTS: ClassVar = frozenset({"layer_norms", "param_norms"})
    needs_params: ClassVar[bool] = True
    strategy: ClassVar = "agc"
    default_percentile: ClassVar = 95.0
    lam: float
    eps: float = 1e-3

    @classmethod
    def suggest(cls, history: History, p: float) -> Suggestion | None:
        with np.errstate(divide="ignore", invalid="ignore"):  # weight norms floored at eps, as the policy does
            ratios = history.layer_norms / np.maximum(history.param_norms, cls.eps)
        value = history.largest(ratios, p)
        if not math.isfinite(value):
            return None
        why = (f"AGC (Brock et al., 2021): lambda at the {p:g}th percentile of each sampled step's largest "
               f"gradient/weight norm ratio{history.layer_note}; what-if estimated with each parameter as one unit.")
        return Suggestion(f"{cls.name}:lambda={spec_number(value)}", why)

    def threshold(self) -> float:
        return self.lam

    def _unit_scales(self, ops: Ops, grad_norms: Array, param_norms: Array) -> tuple[Array, Array]:
        bound = self.lam * ops.maximum(param_norms, self.eps)
        over = grad_norms > bound
        return ops.where(over, bound / ops.maximum(grad_norms, EPS), 1.0), over

    def transform(self, ops: Ops, g: Gradients):
        if g.params is None or len(g.params) != len(g.grads):
            raise GradprobeError("agc needs the parameters with their gradients (one per gradient)")
        grads, post, clipped = [], [], ops.flag(False)
        for grad, param in zip(g.grads, g.params):
            norms = ops.unit_norms(grad)
            scales, over = self._unit_scales(ops, norms, ops.unit_norms(param))
            grads.append(ops.mul(grad, scales))
            unit_post = norms * scales
            post.append(ops.sqrt(ops.sum(unit_post * unit_post)))
            clipped = clipped | ops.any(over)
        return grads, ops.stack(post), clipped

    def estimate(self, ops, norms, maxabs, param_norms, numel):
        scales, over = self._unit_scales(ops, norms, param_norms)
        return norms * scales, ops.any(over)
