"""Applying a clip policy to TensorFlow gradients, eagerly or inside ``tf.function``, with no host reads.

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
"""

from __future__ import annotations

from typing import Any, Sequence

import tensorflow as tf

from gradprobe.errors import GradprobeError
from gradprobe.policies.base import ClipResult, Gradients, Policy
from gradprobe.policies.spec import parse_spec
from gradprobe.policies.tf_ops import TFOps
from gradprobe.tensorflow.norms import sum_squares, unique_slices
from gradprobe.tensorflow.stream import buffer_variable

OPS = TFOps()


class TFClipper:
    """A clip policy with its state in TensorFlow variables, for one stream of optimizer steps."""

    def __init__(self, policy: Policy | str):
        self.policy = parse_spec(policy) if isinstance(policy, str) else policy
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
