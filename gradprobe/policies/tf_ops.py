"""The TensorFlow backend of the policy math: graph-friendly ops, new gradient tensors, no host reads.

Every operation is a TensorFlow op, so the policies run eagerly, inside a
``tf.function`` and under XLA without copying a value to the host. Gradients
are returned as new tensors (TensorFlow tensors are immutable). A sparse
gradient (``tf.IndexedSlices``) must have unique indices (see
:func:`gradprobe.tensorflow.norms.unique_slices`); element-wise operations
then act on its values and keep it sparse. Keras kernels keep their output
units on the last axis, so ``unit_axis`` is -1.
"""

from __future__ import annotations

import tensorflow as tf

from gradprobe.policies.ops import Ops
from gradprobe.tensorflow.norms import max_abs, slice_values, sum_squares


def _map(g, fn):
    """``fn`` applied to a gradient's values, keeping it sparse when it is."""
    if isinstance(g, tf.IndexedSlices):
        return tf.IndexedSlices(fn(g.values), g.indices, g.dense_shape)
    return fn(g)


def _times(g, s):
    return _map(g, lambda v: v * tf.cast(s, v.dtype))


def _f32(x):
    return tf.convert_to_tensor(x, tf.float32)


class TFOps(Ops):
    """Policy math on TensorFlow tensors (float32 scalars and state)."""

    unit_axis = -1

    def const(self, value):
        return tf.constant(float(value), tf.float32)

    def flag(self, value):
        return tf.constant(bool(value))

    def full(self, n, value):
        return tf.fill([n], tf.constant(float(value), tf.float32))

    def arange(self, n):
        return tf.range(n, dtype=tf.float32)

    def where(self, cond, a, b):
        return tf.where(cond, _f32(a), _f32(b))

    def minimum(self, a, b):
        return tf.minimum(a, _f32(b))

    def maximum(self, a, b):
        return tf.maximum(a, _f32(b))

    def sqrt(self, x):
        return tf.sqrt(x)

    def isfinite(self, x):
        return tf.math.is_finite(x)

    def floor(self, x):
        return tf.floor(x)

    def sum(self, x):
        return tf.reduce_sum(x)

    def max(self, x):
        return tf.reduce_max(x) if x.shape.num_elements() else self.const(0.0)

    def any(self, x):
        return tf.reduce_any(x)

    def sort(self, x):
        return tf.sort(x)

    def take(self, x, index):
        return tf.gather(x, tf.cast(index, tf.int32))

    def stack(self, xs):
        return tf.stack(list(xs)) if len(xs) else tf.zeros([0], tf.float32)

    def numel(self, x):
        return int(slice_values(x).shape.num_elements())

    def norms(self, grads, ord):
        values = [slice_values(g) for g in grads]
        return max_abs(values) if ord == float("inf") else tf.sqrt(sum_squares(values))

    def scale(self, grads, s):
        return [_times(g, s) for g in grads]

    def scale_each(self, grads, s):
        return [_times(g, s[i]) for i, g in enumerate(grads)]

    def clamp_each(self, grads, bounds):
        return [_map(g, lambda v, b=b: tf.minimum(tf.maximum(v, tf.cast(-b, v.dtype)), tf.cast(b, v.dtype)))
                for g, b in zip(grads, bounds)]

    def sign_where(self, grads, mask, magnitude):
        return [_map(g, lambda v, m=mask[i]: tf.where(m, tf.sign(v) * tf.cast(magnitude, v.dtype), v))
                for i, g in enumerate(grads)]

    def unit_norms(self, x):
        x = tf.cast(slice_values(x), tf.float32)
        if x.shape.rank <= 1:
            return tf.abs(x)
        axis = self.unit_axis % x.shape.rank
        axes = [a for a in range(x.shape.rank) if a != axis]
        return tf.sqrt(tf.reduce_sum(tf.square(x), axis=axes, keepdims=True))

    def mul(self, x, s):
        return _times(x, s)
