"""One Keras optimizer's steps, kept in TensorFlow variables and copied to the host every flush.

Every step writes one row of :data:`~gradprobe.store.columns.STEP_COLUMNS` into a
ring of ``flush_every`` rows; every ``every`` steps it also writes per-layer
L2 norm, max-abs, non-finite count and parameter norm. All of it is graph
code (a ``tf.function`` of gradprobe's own, inlined into the script's
``tf.function`` when there is one), so recording never retraces the script's
function and never copies a value to the host on an ordinary step.

The host reads the buffers when they are full or ``flush_seconds`` have
passed: from inside the graph, through a ``tf.numpy_function`` that runs only
on those steps, or, where that op cannot run (XLA-compiled functions, Keras
``fit``), from the host between steps (:meth:`TFStepBuffer.flush`). Step counters
live on the host CPU, so deciding whether to flush never waits for an
accelerator. Under XLA there is no clock op, so step times are spread evenly
between flushes.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from gradprobe.store.columns import LAYER_STATS, STEP_COLUMNS, layers_columns, steps_columns
from gradprobe.recording.deferred_signals import critical
from gradprobe.recording.session import Session
from gradprobe.tensorflow.naming import LayerName, variable_device
from gradprobe.tensorflow.norms import dense_values, max_abs, nonfinite_counts, sum_squares
from gradprobe.tensorflow.variables import buffer_variable

# The optimizer's own clipping: ("clipnorm" | "global_clipnorm" | "clipvalue", value).
OptimizerClip = tuple[str, float]


class PolicyStep(NamedTuple):
    """What gradprobe's clip policy did at one step (scalar tensors): the global norm before and
    after, the scale, the threshold in force and whether the update is skipped."""

    norm: tf.Tensor
    post_norm: tf.Tensor
    scale: tf.Tensor
    threshold: tf.Tensor
    skipped: tf.Tensor


def _same_device(a: str, b: str) -> bool:
    a_spec, b_spec = tf.DeviceSpec.from_string(a), tf.DeviceSpec.from_string(b)
    return ((a_spec.device_type or "CPU").upper(), a_spec.device_index or 0) == (
        (b_spec.device_type or "CPU").upper(), b_spec.device_index or 0)


def clipped_norm(clip: OptimizerClip, grads: list[tf.Tensor], squares: tf.Tensor, norm: tf.Tensor) -> tf.Tensor:
    """The global norm after the optimizer's own clipping, as Keras computes that clipping."""
    kind, value = clip
    if kind == "global_clipnorm":
        return norm * (value * tf.minimum(1.0 / norm, 1.0 / value))
    if kind == "clipnorm":
        layer = tf.sqrt(squares)
        return tf.sqrt(tf.reduce_sum(tf.square(layer * value / tf.maximum(layer, value))))
    return tf.sqrt(tf.reduce_sum(sum_squares([tf.clip_by_value(g, -value, value) for g in grads])))


class TFStepBuffer:
    """Records the steps of one optimizer into device buffers (see the module docstring)."""

    def __init__(self, session: Session, index: int, variables: Sequence[Any], names: Sequence[LayerName],
                 keys: Sequence[Any], xla: bool, on_limit: Callable[[], None]):
        self.session = session
        self.index = index
        order = sorted(range(len(variables)), key=lambda i: names[i].order)
        self.variables = [variables[i] for i in order]
        self.position = {keys[i]: p for p, i in enumerate(order)}
        self.layer_ids = np.asarray(session.add_layers([
            {
                "name": names[i].name,
                "group": names[i].group,
                "shape": [int(d) for d in variables[i].shape],
                "numel": int(np.prod(variables[i].shape, dtype=np.int64)),
                "dtype": tf.as_dtype(variables[i].dtype).name,
                "optimizer": index,
            }
            for i in order
        ]), dtype=np.int32)
        self.on_limit = on_limit
        sampling = session.sampling
        self.every = sampling.every
        self.capacity = sampling.flush_every
        self.layer_capacity = math.ceil(self.capacity / self.every) + 1
        n = len(self.variables)
        device = variable_device(self.variables[0])
        host = device if xla else "/cpu:0"
        self.xla_ready = _same_device(host, device)
        self.rows = buffer_variable(lambda: tf.zeros([self.capacity, len(STEP_COLUMNS)]), device)
        self.stats = buffer_variable(lambda: tf.zeros([self.layer_capacity, n, len(LAYER_STATS)]), device)
        self.nonfinite = buffer_variable(lambda: tf.zeros([self.layer_capacity, n], tf.int64), device)
        self.present = buffer_variable(lambda: tf.zeros([self.layer_capacity, n], tf.bool), device)
        self.count = buffer_variable(lambda: tf.constant(0, tf.int64), host)
        self.times = buffer_variable(lambda: tf.fill([self.capacity], tf.constant(math.nan, tf.float64)), "/cpu:0")
        self.last_flush = buffer_variable(lambda: tf.constant(time.time(), tf.float64), "/cpu:0")
        self.flushed = 0
        self._host_time = time.time()
        self._lost_warned = False
        self._lock = threading.Lock()
        self._record = tf.function(self._record_graph, autograph=False)

    def positions(self, keys: Sequence[Any]) -> list[int | None]:
        """The position in this buffer of each variable key (None: not recorded)."""
        return [self.position.get(key) for key in keys]

    def steps_taken(self) -> int:
        """Steps recorded so far (reads one host-side counter)."""
        return int(self.count.numpy())

    def record(self, grads: Sequence[Any], positions: Sequence[int], *, loss: tf.Tensor | None = None,
               pre_norm: tf.Tensor | None = None, threshold: tf.Tensor | None = None,
               optimizer_clip: OptimizerClip | None = None, distributed: bool = False,
               policy: PolicyStep | None = None, squares: tf.Tensor | None = None,
               xla: bool = False, trigger: bool = True, limit: bool = False) -> None:
        """Record one step's gradients (``grads[i]`` belongs to ``positions[i]``).

        ``pre_norm`` / ``threshold``: the script's own clipping when observed.
        ``optimizer_clip``: the optimizer's clipping, applied after this point.
        ``distributed``: the gradients are aggregated over replicas, after any
        per-replica clipping, so the norm before clipping is unknown.
        ``policy``: what gradprobe's clip policy did to these gradients (they
        are recorded as they were before it); ``squares``: their sums of
        squares when already computed for it.
        ``trigger``: flush from inside the graph when due; ``limit``: also
        when ``max_steps`` is reached (then :attr:`on_limit` is called).
        """
        if xla and not self.xla_ready:
            raise RuntimeError("this optimizer was first recorded outside XLA and cannot be recorded "
                               "inside an XLA-compiled function on another device")
        grads = tuple(dense_values(g, xla) for g in grads)
        self._record(grads, tuple(positions), loss, pre_norm, threshold, optimizer_clip, distributed, policy,
                     squares, xla, trigger, limit and self.session.max_steps is not None)

    def _record_graph(self, grads, positions, loss, pre_norm, threshold, optimizer_clip, distributed, policy,
                      squares, xla, trigger, limit):
        grads = list(grads)
        if squares is None:
            squares = sum_squares(grads)
        skipped = tf.constant(0.0)
        if policy is not None:
            pre, post, scale, threshold = policy.norm, policy.post_norm, policy.scale, policy.threshold
            skipped = tf.cast(policy.skipped, tf.float32)
        else:
            pre, post, scale, threshold = self._observed(grads, squares, pre_norm, threshold, optimizer_clip,
                                                         distributed)
        nan = tf.constant(math.nan)
        row = tf.stack([pre, post, scale, nan if threshold is None else threshold,
                        nan if loss is None else loss, skipped])
        step = self.count.read_value()
        self.rows.scatter_nd_update([[step % self.capacity]], row[None])
        if not xla:
            self.times.scatter_nd_update([[step % self.capacity]], tf.timestamp()[None])
        sample = tf.equal(step % self.every, 0)
        slot = (step // self.every) % self.layer_capacity
        tf.cond(sample, lambda: self._write_layers(slot, grads, positions, squares), tf.no_op)
        after = self.count.assign_add(1)
        if trigger:
            due = tf.equal(after % self.capacity, 0)
            due = due | ((after < self.capacity) & tf.equal(tf.bitwise.bitwise_and(after, after - 1), 0))  # early
            due = due | (tf.timestamp() - self.last_flush > self.session.flush_seconds)
            if limit:
                due = due | tf.equal(after, self.session.max_steps)
            tf.cond(due, lambda: self._flush_in_graph(after, limit), tf.no_op)

    @staticmethod
    def _observed(grads, squares, pre_norm, threshold, optimizer_clip, distributed):
        """Pre- and post-clip norms, scale and threshold of the clipping done by the script or the
        optimizer itself, as far as it is observed."""
        received = tf.sqrt(tf.reduce_sum(squares))
        post = clipped_norm(optimizer_clip, grads, squares, received) if optimizer_clip else received
        clipping = optimizer_clip is not None or threshold is not None
        if optimizer_clip is not None:
            threshold = tf.constant(optimizer_clip[1], tf.float32)
        if distributed:
            scale = tf.constant(math.nan) if clipping else tf.constant(1.0)
            return post, post, scale, threshold
        pre = received if pre_norm is None else pre_norm
        scale = tf.where(pre > 0, tf.minimum(post / pre, 1.0), 1.0) if clipping else tf.constant(1.0)
        return pre, post, scale, threshold

    def _write_layers(self, slot, grads, positions, squares):
        params = [tf.convert_to_tensor(self.variables[p]) for p in positions]
        values = tf.stack([tf.sqrt(squares), max_abs(grads), tf.sqrt(sum_squares(params))], axis=1)
        counts = nonfinite_counts(grads)
        index = tf.constant([[p] for p in positions], tf.int32)
        n = len(self.variables)
        at = slot[None, None]
        return tf.group(
            self.stats.scatter_nd_update(at, tf.scatter_nd(index, values, [n, len(LAYER_STATS)])[None]),
            self.nonfinite.scatter_nd_update(at, tf.scatter_nd(index, counts, [n])[None]),
            self.present.scatter_nd_update(at, tf.scatter_nd(index, tf.ones([len(positions)], tf.bool), [n])[None]),
        )

    def _flush_in_graph(self, after, limit):
        done = tf.numpy_function(
            lambda *arrays: self._flush_arrays(*arrays, limit=limit),
            [after, self.rows.read_value(), self.times.read_value(), self.stats.read_value(),
             self.nonfinite.read_value(), self.present.read_value()],
            tf.int64, stateful=True,
        )
        with tf.control_dependencies([done]):
            return tf.group(self.last_flush.assign(tf.timestamp()))

    def _flush_arrays(self, count, rows, times, stats, nonfinite, present, limit: bool) -> np.int64:
        count = int(count)
        with self._lock, critical:
            self._write(count, rows, times, stats, nonfinite, present)
        if limit and self.session.count_step(count):
            self.on_limit()
        return np.int64(count)

    def flush(self) -> None:
        """Copy buffered steps to the host and append them to the run."""
        with self._lock, critical:
            self._write(int(self.count.numpy()), self.rows.numpy(), self.times.numpy(), self.stats.numpy(),
                        self.nonfinite.numpy(), self.present.numpy())
            self.last_flush.assign(time.time())

    def _write(self, count: int, rows, times, stats, nonfinite, present) -> None:
        start = max(self.flushed, count - self.capacity)
        if start > self.flushed and not self._lost_warned:
            self._lost_warned = True
            print(f"gradprobe: {start - self.flushed} steps were not flushed in time and are not recorded; "
                  "lower --flush-every", file=sys.stderr)
        if count <= start:
            return
        steps = np.arange(start, count, dtype=np.int64)
        step_times = np.asarray(times[steps % self.capacity], dtype=np.float64)
        now = time.time()
        missing = np.isnan(step_times)
        if missing.any():
            step_times[missing] = np.linspace(self._host_time, now, len(steps) + 1)[1:][missing]
        self._host_time = now
        newest = (count - 1) // self.every
        sampled = steps[(steps % self.every == 0) & (newest - steps // self.every < self.layer_capacity)]
        slots = (sampled // self.every) % self.layer_capacity
        rank = self.session.layout["rank"]
        self.flushed = count
        self.session.append(
            steps_columns(steps, step_times, rows[steps % self.capacity], self.index, rank),
            layers_columns(sampled, present[slots], stats[slots], nonfinite[slots], self.layer_ids,
                           self.index, rank),
        )
