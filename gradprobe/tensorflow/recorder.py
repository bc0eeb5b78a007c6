"""TensorFlow / Keras hooks: where gradprobe reads gradients in any training with a Keras optimizer.

* Every Keras 3 optimizer update goes through ``BaseOptimizer.apply``
  (``apply_gradients`` calls it): ``fit`` with the default or an overridden
  ``train_step``, several optimizers (GANs), custom ``GradientTape`` loops,
  eager or inside ``tf.function``. gradprobe records the gradients ``apply``
  receives, with a loss scale factor divided out, before the update.
* The optimizer's own clipping (``clipnorm``, ``clipvalue``,
  ``global_clipnorm``) happens after that point: it is recorded as the
  threshold in force, with the norm after clipping and the scale it implies,
  and named in the run's ``optimizers`` entry.
* A script's own ``tf.clip_by_global_norm`` / ``tf.clip_by_value`` /
  ``tf.clip_by_norm`` before ``apply`` is observed: the norm the optimizer
  receives is the post-clip norm, the clip call's input gives the pre-clip
  norm, its bound the threshold.
* The loss is the scalar target of the ``GradientTape.gradient`` call that
  produced the gradients (before any loss scaling, including a
  ``LossScaleOptimizer``'s); NaN when the gradients went through other
  arithmetic first, or the target was not a scalar. With a
  ``LossScaleOptimizer`` (mixed precision) the inner optimizer is recorded,
  with the unscaled gradients; steps it skips on overflow are not recorded.
* Under a multi-replica ``tf.distribute`` strategy the norms are those of the
  aggregated gradient, recorded once per step by the first replica. Keras
  and most scripts clip each replica's gradient before aggregation, so the
  pre-clip norm is not observed: it is recorded equal to the post-clip norm,
  with ``clip_scale`` NaN. The loss is the first replica's own: its loss
  target times the number of replicas, which undoes the scaling for
  distribution that Keras and ``tf.nn.compute_average_loss`` apply (as under
  DDP, each replica's loss is that of its own shard of the batch).
* With a clip policy (``gradprobe run --clip``, ``GradProbe(clip=...)``) the
  gradients ``apply`` receives are clipped before the update (unscaled
  first when the optimizer scales the loss), reusing the norms just
  measured; the step records the pre- and post-clip norms, scale and
  threshold. A skipped update runs under ``tf.cond``, so weights, slots and
  ``iterations`` stay untouched. Under a multi-replica strategy the policy
  clips the aggregated gradient, in every replica alike; a skipped step's
  gradients are zeroed there, but the optimizer still steps (a warning
  says so).
* An optimizer with ``gradient_accumulation_steps=k`` updates the variables
  on every k-th ``apply`` only, with the mean of the k micro-batches'
  gradients. gradprobe records that update once, with the accumulated mean
  (read where Keras clips it, before its own ``clipnorm`` and the like); the
  loss is the mean of the micro-batches' losses (NaN when one is unknown). A
  clip policy clips the accumulated mean, not the micro-batches; a step it
  skips has its gradients zeroed, but the optimizer still steps (a warning
  says so). Under a multi-replica strategy each micro-batch is recorded.
* ``max_steps`` ends training with :class:`~gradprobe.recording.session.StopTraining`
  after the step that reaches it: raised after the optimizer update eagerly,
  between batches in ``fit``, and when the script's ``tf.function`` returns.
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import keras
import tensorflow as tf
from keras.src.backend.tensorflow.optimizer import TFOptimizer
from keras.src.backend.tensorflow.trainer import TensorFlowTrainer
from keras.src.optimizers.base_optimizer import BaseOptimizer
from keras.src.optimizers.loss_scale_optimizer import LossScaleOptimizer
from tensorflow.python.eager.polymorphic_function.polymorphic_function import Function

from gradprobe.errors import GradprobeError
from gradprobe.policies import Policy
from gradprobe.policies.base import recorded_threshold
from gradprobe.recording.hook_guard import GuardedHooks
from gradprobe.recording.session import Session, StopTraining
from gradprobe.tensorflow.clip import OPS, TFClipper, skip_or_apply
from gradprobe.tensorflow.fit import FitHooks
from gradprobe.tensorflow.naming import VariableNamer
from gradprobe.tensorflow.norms import in_xla, slice_values, sum_squares, unique_slices
from gradprobe.tensorflow.origins import Clipped, GradOf, Origins, Trace, Unscaled
from gradprobe.tensorflow.step_buffer import OptimizerClip, PolicyStep, TFStepBuffer
from gradprobe.tensorflow.variables import buffer_variable

_CLIP_SETTINGS = ("clipnorm", "global_clipnorm", "clipvalue")

# Recorders installed in this process; gradprobe.keras.GradProbe defers to them.
_active: list["TFRecorder"] = []


def active_recorder() -> "TFRecorder | None":
    """The recorder already attached to TensorFlow in this process, if any."""
    return _active[0] if _active else None


def optimizer_clip(optimizer: Any) -> OptimizerClip | None:
    """The clipping an optimizer applies itself: (setting, value), or None."""
    for setting in _CLIP_SETTINGS:
        value = getattr(optimizer, setting, None)
        if value is not None and value > 0:
            return setting, float(value)
    return None


@dataclass
class _Step:
    """One optimizer update being recorded: its buffer, whether it runs eagerly and, when a clip
    policy applies, the gradients to update with and the skip flag."""

    buffer: TFStepBuffer
    eager: bool
    grads: list | None = None
    skipped: tf.Tensor | None = None


@dataclass
class _Accumulating:
    """An ``apply`` of an accumulating optimizer whose update, when this call makes one, is recorded
    where Keras clips the accumulated gradients."""

    optimizer: Any
    buffer: TFStepBuffer
    clip: OptimizerClip | None
    xla: bool
    eager: bool


@dataclass
class _Pending:
    """A step waiting for the aggregated gradients of a multi-replica update."""

    buffer: TFStepBuffer
    trace: Trace
    clip: OptimizerClip | None
    xla: bool
    replicas: int


class TFRecorder(GuardedHooks):
    """Installs gradprobe's hooks into TensorFlow and Keras and feeds a :class:`~gradprobe.recording.session.Session`.

    ``patch_fit``: add a :class:`~gradprobe.tensorflow.fit.FitHooks` callback
    to every ``fit`` call (off when the caller is such a callback itself).
    """

    def __init__(self, session: Session, namer: VariableNamer | None = None, patch_fit: bool = True):
        if keras.backend.backend() != "tensorflow":
            raise GradprobeError(f"Keras uses the {keras.backend.backend()} backend; gradprobe records "
                                 "Keras with the tensorflow backend (set KERAS_BACKEND=tensorflow)")
        self.session = session
        self.namer = namer or VariableNamer()
        self.origins = Origins()
        self.policy = session.policy
        self.clippers: dict[Any, TFClipper] = {}
        self._warned: set[str] = set()
        self.patch_fit = patch_fit
        self.buffers: dict[int, tuple[Any, TFStepBuffer | None]] = {}
        self.host_flushing = 0
        self.stop_requested = False
        self.xla_buffers = False
        self._calls = 0  # compiled calls since the last flush, and in all
        self._all_calls = 0
        self._last_flush = time.monotonic()
        self._loss_sums: dict[int, Any] = {}  # per accumulating optimizer: its micro-batches' losses so far
        self._thread = threading.get_ident()
        self._local = threading.local()
        self._patches: list[tuple[Any, str, Any]] = []

    # -- installation -------------------------------------------------------------------

    def install(self) -> "TFRecorder":
        """Patch TensorFlow and Keras; undone by :meth:`remove`."""
        self.session.set_framework("tensorflow", tf.__version__)
        self._install_origins()
        self._install_optimizer()
        self._install_calls()
        if self.patch_fit:
            self._install_fit()
        _active.append(self)
        return self

    def remove(self) -> None:
        """Flush what is buffered and undo every patch."""
        self.flush()
        for owner, attr, original in reversed(self._patches):
            setattr(owner, attr, original)
        self._patches.clear()
        if self in _active:
            _active.remove(self)

    def flush(self) -> None:
        """Write every optimizer's buffered steps to the run (reads the buffers once)."""
        self._calls = 0
        self._last_flush = time.monotonic()
        for buffer in self._buffers():
            try:
                buffer.flush()
            except Exception as exc:  # a failed flush must not hide the script's own outcome
                self._report(exc, "flush")

    def lend_policy(self, policy: Policy | None) -> None:
        """Apply ``policy`` from now on (None: stop), as a ``GradProbe(clip=...)`` callback asks
        during its ``fit``; the run's ``clip`` field names it."""
        self.policy = policy
        self.clippers.clear()
        if policy is not None:
            self.session.writer.update(clip=str(policy))

    def limit_reached(self) -> bool:
        """Whether an optimizer has taken ``max_steps`` steps (reads host-side counters)."""
        return self.session.max_steps is not None and any(
            self.session.count_step(buffer.steps_taken()) for buffer in self._buffers())

    def _buffers(self) -> list[TFStepBuffer]:
        return [buffer for _, buffer in self.buffers.values() if buffer is not None]

    def _patch(self, owner: Any, attr: str, replacement: Any) -> None:
        self._patches.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, replacement)

    def _wrap(self, owner: Any, attr: str, after: Callable[[Any, dict], None]) -> None:
        """Replace ``owner.attr`` by a call to the original followed by ``after(result, arguments)``,
        ``arguments`` being the call's arguments by parameter name."""
        original = getattr(owner, attr)
        signature = inspect.signature(original)
        guarded = self._guard(after)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            result = original(*args, **kwargs)
            guarded(result, signature.bind(*args, **kwargs).arguments)
            return result

        self._patch(owner, attr, wrapper)

    def _install_origins(self) -> None:
        note = self.origins.note

        def gradient(result, arguments):
            origin = GradOf(self.origins.loss_of(arguments["target"]))
            for grad in tf.nest.flatten(result):
                if grad is not None:
                    note(grad, origin)

        def clip_by_value(result, arguments):
            bounds = (arguments["clip_value_min"], arguments["clip_value_max"])
            note(result, Clipped("clip_by_value", arguments["t"], bounds))

        def clip_by_norm(result, arguments):
            note(result, Clipped("clip_by_norm", arguments["t"], arguments["clip_norm"]))

        def clip_by_global_norm(result, arguments):
            outputs, norm = result
            for source, output in zip(arguments["t_list"], outputs):
                if output is not None:
                    note(output, Clipped("clip_by_global_norm", source, arguments["clip_norm"], norm))

        def scale_loss(result, arguments):
            if result is not arguments["loss"]:
                note(result, Unscaled(arguments["loss"]))

        self._wrap(tf.GradientTape, "gradient", gradient)
        self._wrap(tf, "clip_by_value", clip_by_value)
        self._wrap(tf, "clip_by_norm", clip_by_norm)
        self._wrap(tf, "clip_by_global_norm", clip_by_global_norm)
        self._wrap(BaseOptimizer, "scale_loss", scale_loss)
        self._wrap(LossScaleOptimizer, "scale_loss", scale_loss)

    def _install_optimizer(self) -> None:
        recorder = self
        original_apply = BaseOptimizer.apply

        @functools.wraps(original_apply)
        def apply(optimizer, grads, trainable_variables=None):
            if getattr(recorder._local, "busy", False):
                return original_apply(optimizer, grads, trainable_variables)
            recorder._local.busy = True
            try:
                step = recorder._guard(recorder._before_apply)(optimizer, grads, trainable_variables)
                if step is None or step.grads is None:
                    result = original_apply(optimizer, grads, trainable_variables)
                else:
                    result = None
                    update = functools.partial(original_apply, optimizer, step.grads, trainable_variables)
                    if step.skipped is None:
                        update()
                    else:
                        skip_or_apply(step.skipped, update)
            finally:
                recorder._local.busy = False
                recorder._local.accumulating = None
            if step is not None:
                recorder._guard(recorder._after_apply)(step)
            return result

        self._patch(BaseOptimizer, "apply", apply)

        original_scaled_apply = LossScaleOptimizer.apply

        @functools.wraps(original_scaled_apply)
        def scaled_apply(optimizer, grads, trainable_variables=None):
            recorder._local.outer_loss = recorder._guard(recorder._loss_of)(grads)
            try:
                return original_scaled_apply(optimizer, grads, trainable_variables)
            finally:
                recorder._local.outer_loss = None

        self._patch(LossScaleOptimizer, "apply", scaled_apply)
        original_reduce = TFOptimizer._all_reduce_sum_gradients

        @functools.wraps(original_reduce)
        def all_reduce(optimizer, grads_and_vars):
            reduced = original_reduce(optimizer, grads_and_vars)
            clipped = recorder._guard(recorder._record_reduced)(optimizer, reduced)
            return reduced if clipped is None else clipped

        self._patch(TFOptimizer, "_all_reduce_sum_gradients", all_reduce)
        self._install_accumulation()

    def _install_accumulation(self) -> None:
        """Read an accumulating optimizer's update where Keras clips the accumulated gradients:
        ``_backend_apply_gradients`` says which variables they belong to, ``_clip_gradients``
        receives them on the update steps only."""
        recorder = self
        original_backend_apply = BaseOptimizer._backend_apply_gradients
        original_clip = BaseOptimizer._clip_gradients

        @functools.wraps(original_backend_apply)
        def backend_apply(optimizer, grads, trainable_variables):
            recorder._local.applied = trainable_variables
            try:
                return original_backend_apply(optimizer, grads, trainable_variables)
            finally:
                recorder._local.applied = None

        @functools.wraps(original_clip)
        def clip_gradients(optimizer, grads):
            pending = getattr(recorder._local, "accumulating", None)
            if pending is None or pending.optimizer is not optimizer:
                return original_clip(optimizer, grads)
            variables = recorder._local.applied
            clipped = recorder._guard(recorder._record_accumulated)(pending, list(grads), list(variables or ()))
            return original_clip(optimizer, grads if clipped is None else clipped)

        self._patch(BaseOptimizer, "_backend_apply_gradients", backend_apply)
        self._patch(BaseOptimizer, "_clip_gradients", clip_gradients)

    def _install_calls(self) -> None:
        recorder = self
        original_call = Function.__call__

        @functools.wraps(original_call)
        def call(function, *args, **kwargs):
            result = original_call(function, *args, **kwargs)
            if threading.get_ident() == recorder._thread and not getattr(recorder._local, "busy", False):
                recorder._guard(recorder._after_call)()
            return result

        self._patch(Function, "__call__", call)

    def _install_fit(self) -> None:
        recorder = self
        original_fit = TensorFlowTrainer.fit

        signature = inspect.signature(original_fit)

        @functools.wraps(original_fit)
        def fit(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            callbacks = bound.arguments.get("callbacks")
            if callbacks is not None and not isinstance(callbacks, (list, tuple)):
                return original_fit(*args, **kwargs)  # a CallbackList: the buffers flush themselves
            bound.arguments["callbacks"] = [*(callbacks or []), FitHooks(recorder)]
            recorder.host_flushing += 1
            try:
                return original_fit(*bound.args, **bound.kwargs)
            finally:
                recorder.host_flushing -= 1

        self._patch(TensorFlowTrainer, "fit", fit)

    # -- warnings -------------------------------------------------------------------------

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            print(f"gradprobe: {message}", file=sys.stderr)

    # -- optimizer steps ----------------------------------------------------------------

    def _buffer(self, optimizer: Any, variables: list) -> TFStepBuffer | None:
        known = self.buffers.get(id(optimizer))
        if known is not None:
            return known[1]
        if optimizer.built:
            variables = list(optimizer._trainable_variables)
        watched = [v for v in variables if getattr(v, "trainable", True) and self.namer.watched(v)]
        buffer = None
        if watched:
            clip = optimizer_clip(optimizer)
            index = self.session.add_optimizer({
                "class": type(optimizer).__name__,
                "lr": _learning_rate(optimizer),
                "clip": {"kind": clip[0], "threshold": clip[1]} if clip else None,
            })
            buffer = TFStepBuffer(self.session, index, watched, self.namer.names(watched),
                              [optimizer._var_key(v) for v in watched], in_xla(), self._request_stop)
        self.buffers[id(optimizer)] = (optimizer, buffer)
        return buffer

    def _before_apply(self, optimizer, grads, variables) -> "_Step | None":
        grads = list(grads)
        if variables is None:
            if not optimizer.built:
                return None
            variables = optimizer._trainable_variables
        variables = list(variables)
        buffer = self._buffer(optimizer, variables)
        if buffer is None:
            return None
        xla = in_xla()
        self.xla_buffers |= xla
        trace = self.origins.trace(grads, xla)
        if trace.loss is None and getattr(self._local, "outer_loss", None) is not None:
            trace = replace(trace, loss=self._local.outer_loss)
        if trace.clip_kind is not None:
            self._note_script_clip(buffer, trace.clip_kind)
        clip = optimizer_clip(optimizer)
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        if replicas > 1:
            self._local.pending = _Pending(buffer, trace, clip, xla, replicas)
            return None
        if optimizer.gradient_accumulation_steps:
            self._add_micro_batch_loss(buffer, trace.loss)
            self._local.accumulating = _Accumulating(optimizer, buffer, clip, xla, tf.executing_eagerly())
            return _Step(buffer, tf.executing_eagerly())
        positions = buffer.positions([optimizer._var_key(v) for v in variables])
        index = [i for i, (p, g) in enumerate(zip(positions, grads)) if p is not None and g is not None]
        if not index:
            return None
        factor = optimizer.loss_scale_factor
        values = [unique_slices(grads[i], xla) for i in index]
        if factor is not None:
            values = OPS.scale(values, 1.0 / tf.cast(factor, tf.float32))
        dense = [slice_values(v) for v in values]
        squares = sum_squares(dense)
        step = _Step(buffer, tf.executing_eagerly())
        policy = None
        if self.policy is not None:
            policy, step.grads, step.skipped = self._clip(buffer, optimizer, grads, index, values, variables,
                                                          squares, factor)
        buffer.record(dense, [positions[i] for i in index], loss=trace.loss, pre_norm=trace.pre_norm,
                      threshold=trace.threshold, optimizer_clip=clip, policy=policy, squares=squares, xla=xla,
                      trigger=self._in_graph_flush(xla), limit=not step.eager)
        return step

    def _clip(self, buffer, optimizer, grads, index, values, variables, squares, factor):
        """Apply the clip policy to one step's unscaled ``values`` (of ``grads[i]`` for ``i`` in
        ``index``); return what it did, the gradients to hand the optimizer (scaled back) and the
        skip flag (None: the policy never skips)."""
        clipped, policy = self._apply_policy(buffer.index, values, [variables[i] for i in index], squares)
        if factor is not None:
            clipped = OPS.scale(clipped, tf.cast(factor, tf.float32))
        grads = list(grads)
        for i, g in zip(index, clipped):
            grads[i] = g
        skipped = None
        if self.policy.can_skip:
            skipped = policy.skipped
            if not optimizer.built:  # build outside the update that may be skipped
                optimizer.build(variables)
        return policy, grads, skipped

    def _apply_policy(self, key, values, variables, squares) -> tuple[list, PolicyStep]:
        """Clip ``values`` with the policy state kept under ``key``, reusing their sums of squares."""
        clipper = self.clippers.get(key)
        if clipper is None:
            clipper = self.clippers[key] = TFClipper(self.policy)
        clipped, result = clipper.clip(values, variables, tf.sqrt(squares))
        threshold = recorded_threshold(OPS, result)
        return clipped, PolicyStep(result.norm, result.post_norm, result.scale, threshold, result.skipped)

    def _add_micro_batch_loss(self, buffer: TFStepBuffer, loss: tf.Tensor | None) -> None:
        """Add one micro-batch's loss (NaN: unknown) to its accumulating optimizer's sum."""
        total = self._loss_sums.get(buffer.index)
        if total is None:
            total = self._loss_sums[buffer.index] = buffer_variable(lambda: tf.constant(0.0), None)
        total.assign_add(tf.constant(math.nan) if loss is None else loss)

    def _record_accumulated(self, pending: _Accumulating, grads: list, variables: list) -> list | None:
        """Record the accumulated (mean) gradients an update uses and clip them with the policy;
        returns the gradients Keras goes on with (None: unchanged)."""
        optimizer, buffer = pending.optimizer, pending.buffer
        positions = buffer.positions([optimizer._var_key(v) for v in variables])
        index = [i for i, (p, g) in enumerate(zip(positions, grads)) if p is not None and g is not None]
        if not index:
            return None
        values = [unique_slices(grads[i], pending.xla) for i in index]
        dense = [slice_values(v) for v in values]
        squares = sum_squares(dense)
        total = self._loss_sums[buffer.index]
        loss = total.read_value() / float(optimizer.gradient_accumulation_steps)
        policy, result = None, None
        if self.policy is not None:
            if self.policy.can_skip:
                self._warn_once(f"with gradient accumulation {self.policy} zeroes a skipped step's gradients but "
                                "the optimizer still steps (momentum and weight decay still apply)")
            clipped, policy = self._apply_policy(buffer.index, values, [variables[i] for i in index], squares)
            result = list(grads)
            for i, g in zip(index, clipped):
                result[i] = g
        buffer.record(dense, [positions[i] for i in index], loss=loss, optimizer_clip=pending.clip, policy=policy,
                      squares=squares, xla=pending.xla, trigger=self._in_graph_flush(pending.xla),
                      limit=not pending.eager)
        total.assign(0.0)
        return result

    def _loss_of(self, grads) -> tf.Tensor | None:
        """The loss of gradients a loss-scaling optimizer receives (its inner optimizer gets
        unscaled copies, which cannot be traced back)."""
        return self.origins.trace(list(grads)).loss

    def _after_apply(self, step: "_Step") -> None:
        if step.eager and self.session.max_steps is not None and self.session.count_step(step.buffer.steps_taken()):
            self.flush()
            raise StopTraining(f"max steps ({self.session.max_steps}) reached")

    def _record_reduced(self, optimizer, reduced) -> list | None:
        """Record the aggregated gradients of a multi-replica step (first replica only) and clip
        them with the policy; returns the clipped ``(gradient, variable)`` pairs (None: unchanged).

        Every replica clips its identical copy of the aggregated gradients with a policy state of
        its own, so all replicas apply the same update without communicating.
        """
        pending, self._local.pending = getattr(self._local, "pending", None), None
        context = tf.distribute.get_replica_context()
        if pending is None or context is None:
            return None
        replica = int(tf.get_static_value(context.replica_id_in_sync_group))
        buffer = pending.buffer
        positions = buffer.positions([optimizer._var_key(v) for _, v in reduced])
        index = [i for i, (p, (g, _)) in enumerate(zip(positions, reduced)) if p is not None and g is not None]
        if not index:
            return None
        values = [unique_slices(reduced[i][0], pending.xla) for i in index]
        dense = [slice_values(v) for v in values]
        squares = sum_squares(dense)
        policy, clipped_pairs = None, None
        if self.policy is not None:
            if self.policy.can_skip:
                self._warn_once(f"under a multi-replica strategy {self.policy} zeroes a skipped step's gradients "
                                "but the optimizer still steps (momentum and weight decay still apply)")
            clipped, policy = self._apply_policy((buffer.index, replica), values, [reduced[i][1] for i in index],
                                                 squares)
            clipped_pairs = list(reduced)
            for i, g in zip(index, clipped):
                clipped_pairs[i] = (g, reduced[i][1])
        if replica == 0:
            loss = pending.trace.loss * pending.replicas if pending.trace.loss is not None else None
            buffer.record(dense, [positions[i] for i in index], loss=loss, threshold=pending.trace.threshold,
                          optimizer_clip=pending.clip, distributed=True, policy=policy, squares=squares,
                          xla=pending.xla, trigger=self._in_graph_flush(pending.xla),
                          limit=not tf.executing_eagerly())
        return clipped_pairs

    def _after_call(self) -> None:
        """After the script's ``tf.function`` returns: end training when asked to, and flush
        XLA-compiled steps, which cannot flush themselves (one step per call assumed)."""
        if self.stop_requested:
            raise StopTraining(f"max steps ({self.session.max_steps}) reached")
        if not self.xla_buffers or self.host_flushing:
            return
        self._calls += 1
        self._all_calls += 1
        idle = time.monotonic() - self._last_flush
        if self._calls >= self.session.sampling.flush_every or self.session.flush_due(self._all_calls, idle):
            self.flush()
            if self.session.max_steps is not None and self.limit_reached():
                raise StopTraining(f"max steps ({self.session.max_steps}) reached")

    def _in_graph_flush(self, xla: bool) -> bool:
        return not xla and self.host_flushing == 0

    def _note_script_clip(self, buffer: TFStepBuffer, kind: str) -> None:
        entry = self.session.optimizers[buffer.index]
        if entry.get("script_clip") != kind:
            entry["script_clip"] = kind
            self.session.writer.write_meta()

    def _request_stop(self) -> None:
        self.stop_requested = True


def _learning_rate(optimizer: Any) -> float | None:
    try:
        with tf.init_scope():
            return float(optimizer.learning_rate)
    except Exception:  # a schedule or a value that cannot be read here
        return None
