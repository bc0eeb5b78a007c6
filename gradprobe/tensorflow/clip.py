"""The TensorFlow clip backend: a clip policy applied eagerly or inside ``tf.function``, with no host reads.

:class:`TFClipper` keeps the policy's state (AutoClip history, ZClip
statistics, skip window) in TensorFlow variables, so a compiled training step
reads and updates it on the device without retracing. It returns clipped
copies of the gradients and every figure as a tensor.

Skipping an update (``skip`` policies): the skipped step's gradients are
multiplied by 0 and ``result.skipped`` is set; since momentum and weight
decay would still move the parameters, run the update under
``tf.cond(result.skipped, ...)`` (:meth:`TFClipper.apply_gradients` does).

Example::

    clip = TFClipper("zclip:z=2.5+skip:sigma=6")

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x))
        grads = tape.gradient(loss, model.trainable_variables)
        clip.apply_gradients(optimizer, grads, model.trainable_variables)

:class:`TFOps` is the TensorFlow implementation of :class:`~gradprobe.policies.ops.Ops`.
Every operation is a TensorFlow op, so the policies run eagerly, inside a
``tf.function`` and under XLA without copying a value to the host. Gradients
are returned as new tensors (TensorFlow tensors are immutable). A sparse
gradient (``tf.IndexedSlices``) must have unique indices (see
:func:`gradprobe.tensorflow.norms.unique_slices`); element-wise operations
then act on its values and keep it sparse. Keras kernels keep their output
units on the last axis, so ``unit_axis`` is -1.
"""

from __future__ import annotations

from typing import Any, Sequence

import tensorflow as tf

from gradprobe.errors import GradprobeError
from gradprobe.policies.base import ClipResult, Gradients, Policy
from gradprobe.policies.ops import Ops
from gradprobe.policies.spec import as_policy
from gradprobe.tensorflow.norms import max_abs, slice_values, sum_squares, unique_slices
from gradprobe.tensorflow.variables import buffer_variable


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

    def isnan(self, x):
        return tf.math.is_nan(x)

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

OPS = TFOps()


class TFClipper:
    """A clip policy with its state in TensorFlow variables, for one stream of optimizer steps."""

    def __init__(self, policy: Policy | str):
        self.policy = as_policy(policy)
        self.state: Any = None

    def clip(self, grads: Sequence[Any], variables: Sequence[Any] | None = None,
             layer_norms: tf.Tensor | None = None) -> tuple[list[Any], ClipResult]:
        """Clip ``grads`` (unscaled; None entries are left alone) with the policy.

        ``variables``: the variables, same order (``agc`` needs them).
        ``layer_norms``: the gradients' L2 norms when already computed, as a
        float32 vector over the non-None gradients. Returns the clipped
        gradients and the :class:`~gradprobe.policies.base.ClipResult`
        (scalar tensors); the policy's state is updated in place.
        """
        grads = list(grads)
        present = [i for i, g in enumerate(grads) if g is not None]
        values = [unique_slices(grads[i]) for i in present]
        if layer_norms is None:
            layer_norms = tf.sqrt(sum_squares(values))
        params = None
        if self.policy.needs_params:
            if variables is None:
                raise GradprobeError(f"{self.policy} needs the variables of the gradients")
            variables = list(variables)
            params = [tf.convert_to_tensor(variables[i]) for i in present]
        if self.state is None:
            with tf.init_scope():
                initial = self.policy.init_state(OPS)
            self.state = tf.nest.map_structure(lambda t: buffer_variable(lambda: t, None), initial)
        state = tf.nest.map_structure(lambda v: v.read_value(), self.state)
        batch = Gradients(values, layer_norms, OPS.global_norm(layer_norms), params)
        result, clipped, new_state = self.policy.apply(OPS, state, batch)
        tf.nest.map_structure(lambda v, t: v.assign(t), self.state, new_state)
        for i, g in zip(present, clipped):
            grads[i] = g
        return grads, result

    def apply_gradients(self, optimizer: Any, grads: Sequence[Any], variables: Sequence[Any]) -> ClipResult:
        """Clip ``grads`` and apply them with ``optimizer`` unless the policy skips the step."""
        variables = list(variables)
        clipped, result = self.clip(grads, variables)
        if not self.policy.can_skip:
            optimizer.apply(clipped, variables)
        else:
            skip_or_apply(result.skipped, lambda: optimizer.apply(clipped, variables))
        return result


def skip_or_apply(skipped: tf.Tensor, update) -> None:
    """Run ``update()`` (an optimizer update) unless ``skipped``: in the graph when compiled, with
    one host read eagerly."""
    if tf.executing_eagerly():
        if not bool(skipped):
            update()
        return

    def run():
        update()
        return tf.constant(True)

    tf.cond(skipped, lambda: tf.constant(False), run)
