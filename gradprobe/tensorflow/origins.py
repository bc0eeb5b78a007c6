"""Where the gradients an optimizer receives came from: their loss and the script's own clipping.

TensorFlow has no ``backward()`` whose argument is the loss, and a script's
``tf.clip_by_global_norm`` happens before the optimizer sees anything. So
gradprobe remembers, by tensor identity, what ``GradientTape.gradient``
returned (and for which target), what the clip functions returned (and from
which input), and what ``optimizer.scale_loss`` returned. When gradients reach
``optimizer.apply``, :meth:`Origins.trace` follows them back. This works the
same eagerly and while ``tf.function`` traces (symbolic tensors have
identity too); gradients that went through other arithmetic are not traced,
and their loss is unknown.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any, Sequence

import tensorflow as tf

from gradprobe.tensorflow.norms import dense_values, sum_squares

# Entries kept before dead ones are pruned (and, if still too many, the oldest).
_LIMIT = 4096


@dataclass(frozen=True)
class GradOf:
    """A gradient returned by ``GradientTape.gradient`` for ``target`` (None: not a scalar)."""

    target: tf.Tensor | None


@dataclass(frozen=True)
class Clipped:
    """A tensor returned by a clip function ``kind`` from ``source``.

    ``threshold``: the clip value (for ``clip_by_value``, the pair of bounds);
    ``pre_norm``: the global norm of the inputs when the function computes it
    (``clip_by_global_norm``).
    """

    kind: str
    source: Any
    threshold: Any
    pre_norm: tf.Tensor | None = None


@dataclass(frozen=True)
class Unscaled:
    """A loss multiplied by an optimizer's loss scale; ``loss`` is the value before scaling."""

    loss: tf.Tensor


@dataclass(frozen=True)
class Trace:
    """What :meth:`Origins.trace` found for one optimizer step (None: not observed)."""

    loss: tf.Tensor | None
    clip_kind: str | None = None
    pre_norm: tf.Tensor | None = None
    threshold: tf.Tensor | None = None


class Origins:
    """Identity-keyed memory of tensors' origins, safe across replica threads."""

    def __init__(self):
        self._entries: dict[int, tuple[weakref.ref, Any]] = {}
        self._lock = threading.Lock()

    def note(self, output: Any, origin: Any) -> None:
        """Remember that ``output`` came from ``origin``."""
        try:
            ref = weakref.ref(output)
        except TypeError:
            return
        with self._lock:
            self._entries[id(output)] = (ref, origin)
            if len(self._entries) > _LIMIT:
                self._prune()

    def lookup(self, tensor: Any) -> Any:
        """The origin noted for ``tensor``, or None."""
        entry = self._entries.get(id(tensor))
        if entry is None or entry[0]() is not tensor:
            return None
        return entry[1]

    def _prune(self) -> None:
        live = {key: entry for key, entry in self._entries.items() if entry[0]() is not None}
        keep = list(live.items())[-(_LIMIT // 2):]
        self._entries = dict(keep)

    def loss_of(self, target: Any) -> tf.Tensor | None:
        """The loss a ``GradientTape.gradient`` target stands for: a scalar, unscaled."""
        if not isinstance(target, (tf.Tensor, tf.Variable)) or target.shape.num_elements() != 1:
            return None
        origin = self.lookup(target)
        loss = origin.loss if isinstance(origin, Unscaled) else target
        return tf.reshape(tf.cast(loss, tf.float32), [])

    def trace(self, grads: Sequence[Any], xla: bool = False) -> Trace:
        """Follow ``grads`` (None entries allowed) back to their loss and the script's clip call."""
        loss, clip, sources = None, None, []
        for grad in grads:
            if grad is None:
                continue
            origin = self.lookup(grad)
            source = grad
            if isinstance(origin, Clipped):
                clip = clip or origin
                source = origin.source
                origin = self.lookup(source)
            sources.append(source)
            if loss is None and isinstance(origin, GradOf):
                loss = origin.target
        if clip is None:
            return Trace(loss)
        pre_norm = clip.pre_norm
        if pre_norm is None:
            pre_norm = tf.sqrt(tf.reduce_sum(sum_squares([dense_values(s, xla) for s in sources])))
        threshold = value_bound(*clip.threshold) if clip.kind == "clip_by_value" else clip.threshold
        return Trace(loss, clip.kind, tf.cast(pre_norm, tf.float32), tf.cast(threshold, tf.float32))


def value_bound(low: Any, high: Any) -> tf.Tensor:
    """The threshold of ``clip_by_value(t, low, high)``: the larger bound in magnitude."""
    return tf.maximum(tf.abs(tf.cast(low, tf.float32)), tf.abs(tf.cast(high, tf.float32)))
