"""The small array namespace the policy math is written against, and its numpy implementation.

Every policy computes its thresholds and scales once, through an :class:`Ops`
object, so the same code runs on numpy arrays (what-if replay on a recorded
run, the reference applier) and on device tensors (live clipping, see
:mod:`gradprobe.pytorch.clip`). The math uses only element-wise
arithmetic, ``where``/``minimum``/``maximum`` and small reductions: no Python
branch ever depends on an array's value, so a device backend never has to
copy a value to the host. Scalars and state are float32, as on the device.

A backend supplies two groups of operations:

* array math on scalars and small vectors (``where``, ``sort``, ``take``...);
* operations on a list of gradient arrays (``norms``, ``scale``,
  ``clamp_each``...). A backend may modify the arrays in place (numpy,
  torch) or return new ones (TensorFlow); callers always use the returned list.

``unit_axis`` is the axis of a weight that indexes its output units (for
unit-wise clipping): 0 for PyTorch (``out_features`` first), -1 for Keras
kernels (``units`` last).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

Array = Any


class Ops:
    """Interface of an array backend; see the module docstring."""

    unit_axis: int = 0

    # -- scalars and small float32 vectors --------------------------------------------
    def const(self, value: float) -> Array:
        """A float32 scalar."""
        raise NotImplementedError

    def flag(self, value: bool) -> Array:
        """A boolean scalar."""
        raise NotImplementedError

    def full(self, n: int, value: float) -> Array:
        """A float32 vector of ``n`` copies of ``value``."""
        raise NotImplementedError

    def arange(self, n: int) -> Array:
        """``[0, 1, ..., n-1]`` as float32."""
        raise NotImplementedError

    def where(self, cond: Array, a: Array | float, b: Array | float) -> Array:
        """Element-wise ``a if cond else b`` (either side may be a Python float)."""
        raise NotImplementedError

    def minimum(self, a: Array, b: Array | float) -> Array:
        """Element-wise minimum."""
        raise NotImplementedError

    def maximum(self, a: Array, b: Array | float) -> Array:
        """Element-wise maximum."""
        raise NotImplementedError

    def sqrt(self, x: Array) -> Array:
        """Element-wise square root."""
        raise NotImplementedError

    def isfinite(self, x: Array) -> Array:
        """Element-wise finiteness test."""
        raise NotImplementedError

    def isnan(self, x: Array) -> Array:
        """Element-wise NaN test."""
        raise NotImplementedError

    def floor(self, x: Array) -> Array:
        """Element-wise floor."""
        raise NotImplementedError

    def sum(self, x: Array) -> Array:
        """Sum of all elements."""
        raise NotImplementedError

    def max(self, x: Array) -> Array:
        """Largest element (NaN if any is NaN)."""
        raise NotImplementedError

    def any(self, x: Array) -> Array:
        """True if any element of a boolean array is true."""
        raise NotImplementedError

    def sort(self, x: Array) -> Array:
        """Ascending sort of a vector (NaN last)."""
        raise NotImplementedError

    def take(self, x: Array, index: Array) -> Array:
        """``x[index]`` for a scalar holding a whole number, without reading it on the host."""
        raise NotImplementedError

    def stack(self, xs: Sequence[Array]) -> Array:
        """Scalars into a vector."""
        raise NotImplementedError

    def global_norm(self, layer_norms: Array) -> Array:
        """The L2 norm of all gradients from their per-tensor L2 norms."""
        return self.sqrt(self.sum(layer_norms * layer_norms))

    # -- lists of gradient arrays -----------------------------------------------------
    def numel(self, x: Array) -> int:
        """Number of elements of ``x`` (known on the host from its shape)."""
        raise NotImplementedError

    def norms(self, grads: list[Array], ord: float) -> Array:
        """Per-array norms of order ``ord`` (2 or inf) as a float32 vector."""
        raise NotImplementedError

    def scale(self, grads: list[Array], s: Array) -> list[Array]:
        """Multiply every gradient by the scalar ``s``."""
        raise NotImplementedError

    def scale_each(self, grads: list[Array], s: Array) -> list[Array]:
        """Multiply gradient ``i`` by ``s[i]``."""
        raise NotImplementedError

    def clamp_each(self, grads: list[Array], bounds: Sequence[float]) -> list[Array]:
        """Clamp gradient ``i`` element-wise to ``[-bounds[i], bounds[i]]``."""
        raise NotImplementedError

    def sign_where(self, grads: list[Array], mask: Array, magnitude: float) -> list[Array]:
        """Replace gradient ``i`` by ``magnitude * sign(g)`` where ``mask[i]``."""
        raise NotImplementedError

    def unit_norms(self, x: Array) -> Array:
        """L2 norms of the units of ``x`` along ``unit_axis``, keeping dims for broadcasting.

        Each unit is one index of ``unit_axis``, its norm taken over all the
        other axes; a vector's units are its elements (each output unit has
        one bias), a scalar is one unit. Computed in float32 or wider.
        """
        raise NotImplementedError

    def mul(self, x: Array, s: Array) -> Array:
        """``x * s`` with broadcasting (in place where the backend can)."""
        raise NotImplementedError


_SCALARS = (float, int, bool, np.generic)


class NumpyOps(Ops):
    """numpy backend: replay on recorded history and the reference applier (modifies arrays in place)."""

    def __init__(self, unit_axis: int = 0):
        self.unit_axis = unit_axis

    def const(self, value: float) -> Array:
        return np.float32(value)

    def flag(self, value: bool) -> Array:
        return np.bool_(value)

    def full(self, n: int, value: float) -> Array:
        return np.full(n, value, dtype=np.float32)

    def arange(self, n: int) -> Array:
        return np.arange(n, dtype=np.float32)

    def where(self, cond, a, b):
        if isinstance(cond, _SCALARS) and isinstance(a, _SCALARS) and isinstance(b, _SCALARS):
            return np.float32(a if cond else b)  # a replay's per-step state: 4x faster than np.where on scalars
        return np.where(cond, a, b).astype(np.float32, copy=False)

    def minimum(self, a, b):
        return np.minimum(a, b)

    def maximum(self, a, b):
        return np.maximum(a, b)

    def sqrt(self, x):
        return np.sqrt(x)

    def isfinite(self, x):
        return np.isfinite(x)

    def isnan(self, x):
        return np.isnan(x)

    def floor(self, x):
        return np.floor(x)

    def sum(self, x):
        return np.sum(x, dtype=np.float32)

    def max(self, x):
        return np.max(x) if np.size(x) else np.float32(0.0)

    def any(self, x):
        return np.any(x)

    def sort(self, x):
        return np.sort(x)

    def take(self, x, index):
        return x[np.asarray(index).astype(np.int64)]

    def stack(self, xs):
        return np.asarray(xs, dtype=np.float32) if len(xs) else np.zeros(0, np.float32)

    def numel(self, x):
        return int(np.size(x))

    def norms(self, grads, ord):
        out = [np.linalg.norm(np.asarray(g, dtype=np.float32).ravel(), ord) if np.size(g) else 0.0 for g in grads]
        return np.asarray(out, dtype=np.float32)

    def scale(self, grads, s):
        for g in grads:
            np.multiply(g, s, out=g, casting="unsafe")
        return grads

    def scale_each(self, grads, s):
        for g, si in zip(grads, s):
            np.multiply(g, si, out=g, casting="unsafe")
        return grads

    def clamp_each(self, grads, bounds):
        for g, b in zip(grads, bounds):
            np.clip(g, -b, b, out=g)
        return grads

    def sign_where(self, grads, mask, magnitude):
        for g, m in zip(grads, mask):
            g[...] = np.where(m, magnitude * np.sign(g), g)
        return grads

    def unit_norms(self, x):
        x = np.asarray(x, dtype=np.promote_types(np.asarray(x).dtype, np.float32))
        if x.ndim <= 1:
            return np.abs(x)
        axes = tuple(a for a in range(x.ndim) if a != self.unit_axis % x.ndim)
        return np.sqrt(np.sum(x * x, axis=axes, keepdims=True))

    def mul(self, x, s):
        np.multiply(x, s, out=x, casting="unsafe")
        return x
