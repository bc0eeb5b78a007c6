"""Variables gradprobe keeps for itself in TensorFlow: step buffers and clip policy state."""

from __future__ import annotations

from typing import Callable

import tensorflow as tf
from tensorflow.python.ops.resource_variable_ops import ResourceVariable


def buffer_variable(initial: Callable[[], tf.Tensor], device: str | None) -> ResourceVariable:
    """A plain variable created outside any graph being traced, even under a distribution
    strategy's scope (only one replica writes it); ``device`` None: TensorFlow's placement."""
    with tf.init_scope(), tf.device(device):
        return ResourceVariable(initial(), trainable=False)
