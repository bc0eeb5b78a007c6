"""Per-variable gradient statistics as TensorFlow ops, usable eagerly, in ``tf.function`` and under XLA.

Reductions run in float32, or in float64 for float64 tensors, so half
precision values cannot overflow; results are float32. A sparse gradient
(``tf.IndexedSlices``, from embeddings) is reduced over its values after
summing the rows of repeated indices, which is the dense gradient's norm
without materialising it.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.python.ops.control_flow_util import GraphOrParentsInXlaContext


def in_xla() -> bool:
    """Whether the code being traced will be compiled with XLA."""
    return not tf.executing_eagerly() and GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def unique_slices(grad: tf.Tensor | tf.IndexedSlices, xla: bool | None = None) -> tf.Tensor | tf.IndexedSlices:
    """A gradient in the form element-wise statistics and clipping can use: a dense gradient as it
    is, a sparse one with the values of repeated indices summed (under XLA, which has no dynamic
    shapes, made dense instead; ``xla`` None: find out)."""
    if not isinstance(grad, tf.IndexedSlices):
        return grad
    if xla is None:
        xla = in_xla()
    if xla:
        return tf.convert_to_tensor(grad)
    unique, position = tf.unique(grad.indices)
    values = tf.math.unsorted_segment_sum(grad.values, position, tf.shape(unique)[0])
    return tf.IndexedSlices(values, unique, grad.dense_shape)


def slice_values(grad: tf.Tensor | tf.IndexedSlices) -> tf.Tensor:
    """A sparse gradient's values, or a dense gradient itself."""
    return grad.values if isinstance(grad, tf.IndexedSlices) else grad


def dense_values(grad: tf.Tensor | tf.IndexedSlices, xla: bool | None = None) -> tf.Tensor:
    """The values a gradient adds to its variable, with repeated sparse indices summed."""
    return slice_values(unique_slices(grad, xla))


def _wide(t: tf.Tensor) -> tf.Tensor:
    if t.dtype.is_complex:
        return tf.abs(tf.cast(t, tf.complex128))
    return t if t.dtype == tf.float64 else tf.cast(t, tf.float32)


def sum_squares(tensors: list[tf.Tensor]) -> tf.Tensor:
    """Sum of squares of each tensor, as a float32 vector."""
    if not tensors:
        return tf.zeros([0], tf.float32)
    return tf.stack([tf.cast(tf.reduce_sum(tf.square(_wide(t))), tf.float32) for t in tensors])


def max_abs(tensors: list[tf.Tensor]) -> tf.Tensor:
    """Largest absolute value of each tensor (0 for an empty tensor), as a float32 vector."""
    if not tensors:
        return tf.zeros([0], tf.float32)
    return tf.stack([
        tf.zeros([], tf.float32) if t.shape.num_elements() == 0 else tf.cast(tf.reduce_max(tf.abs(_wide(t))), tf.float32)
        for t in tensors
    ])


def nonfinite_counts(tensors: list[tf.Tensor]) -> tf.Tensor:
    """Number of NaN/Inf elements of each tensor, as an int64 vector."""
    if not tensors:
        return tf.zeros([0], tf.int64)
    return tf.stack([
        tf.size(t, out_type=tf.int64) - tf.math.count_nonzero(tf.math.is_finite(_wide(t)), dtype=tf.int64)
        for t in tensors
    ])
