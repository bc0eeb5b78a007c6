"""TensorFlow side of :func:`gradprobe.task_gradients`: per-task gradients from a persistent tape."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from gradprobe.errors import GradprobeError


def shared_variables(shared: Any) -> list[tf.Variable]:
    """The trainable variables of ``shared`` (a Keras layer/model or a list of variables), each once."""
    variables = getattr(shared, "trainable_variables", None)
    if variables is None:
        try:
            variables = list(shared)
        except TypeError:
            raise GradprobeError("task_gradients: shared must be a Keras layer or model or a list of its "
                                 f"variables, not {type(shared).__name__}") from None
    variables = list({id(v): v for v in variables}.values())
    if not variables:
        raise GradprobeError("task_gradients: shared has no trainable variable (is the model built?)")
    return variables


def check(losses: Mapping[str, Any], shared: Any, tape: Any) -> None:
    """Raise a one-line error when the tape, the losses or the shared variables cannot be used."""
    if not isinstance(tape, tf.GradientTape):
        raise GradprobeError("task_gradients: TensorFlow losses need tape=, the tf.GradientTape that "
                             "recorded them")
    if not getattr(tape, "_persistent", False):
        raise GradprobeError("task_gradients: the tape must be persistent (tf.GradientTape(persistent=True)) "
                             "so that the training step can still use it")
    if not tf.executing_eagerly():
        raise GradprobeError("task_gradients runs eagerly; call it outside tf.function")
    for name, loss in losses.items():
        if not tf.is_tensor(loss) or int(np.prod(loss.shape)) != 1:
            raise GradprobeError(f"task_gradients: the loss of task {name!r} must be a scalar tensor")
    shared_variables(shared)


def gram(losses: Mapping[str, Any], shared: Any, tape: tf.GradientTape) -> np.ndarray:
    """``G[i, j] = <g_i, g_j>``, ``g_i`` the gradient of task i's loss on the shared variables
    (float32, float64 for float64 variables); sparse gradients are made dense."""
    variables = shared_variables(shared)
    dtype = tf.float64 if any(tf.as_dtype(v.dtype) == tf.float64 for v in variables) else tf.float32
    rows = []
    for loss in losses.values():
        grads = tape.gradient(loss, variables,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        rows.append(tf.concat([tf.reshape(tf.cast(tf.convert_to_tensor(g), dtype), [-1]) for g in grads], 0))
    vectors = tf.stack(rows)
    return tf.matmul(vectors, vectors, transpose_b=True).numpy()


def active_session() -> Any | None:
    """The session of the TensorFlow recorder attached in this process (``None`` when nothing records)."""
    from gradprobe.tensorflow.recorder import active_recorder

    recorder = active_recorder()
    if recorder is None or recorder.disabled or recorder.session.closed:
        return None
    return recorder.session
