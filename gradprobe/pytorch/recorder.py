"""PyTorch hooks: where gradprobe reads gradients in any training loop.

* Optimizer loops: a global optimizer step pre-hook reads the gradients the
  update is about to use (after accumulation and AMP unscaling). With a
  closure (LBFGS, or any ``step(closure)``), the gradient of the closure's
  first evaluation in the step is recorded: the gradient at the parameters the
  step starts from.
* ``GradScaler.step`` that skips the update on inf/NaN: recorded with
  ``skipped`` set, gradients as unscaled.
* No optimizer at all (``p.data.add_(p.grad, alpha=-lr)``): one record per
  ``backward()`` call, once it is clear no optimizer exists.
* The loss is the scalar ``backward()`` was called on (summed over the
  backward calls since the previous step, unscaled when it came from
  ``GradScaler.scale``). Several optimizers stepping on the same backward
  passes all record that loss. With a closure, the loss of its first
  evaluation in the step is recorded, matching the gradient, plus the losses
  back-propagated before the step when the closure does not zero the
  gradients (Lightning's ``accumulate_grad_batches``).
* A step whose K > 1 backward passes each divided their loss by K twice
  (:mod:`gradprobe.pytorch.loss_factors`) is counted in the optimizer's
  ``loss_divided_twice`` entry of ``run.json``.
* A script's own ``torch.nn.utils.clip_grad_norm_`` call is observed: its
  returned norm is recorded as the pre-clip norm and ``max_norm`` as the
  threshold, so the report can tell whether that clipping ever fires. A call
  that comes after an optimizer step and before the next ``backward()``
  clips gradients that were already used: it is counted in that optimizer's
  ``clip_after_step`` entry of ``run.json`` instead.
* With a clip policy (``gradprobe run --clip``, ``watch(clip=...)``) the
  gradients are clipped right where they are read, reusing the norms just
  measured, and the step records the pre- and post-clip norms, scale and
  threshold. With a closure, the gradient is clipped when the closure returns,
  before the update, for optimizers that evaluate it once per step (SGD, Adam,
  ... under Lightning's automatic optimisation). Optimizers that evaluate it
  again (LBFGS) update with later gradients: recorded but not clipped, with a
  warning. A ``step(fn)`` whose first argument is not named ``closure`` is an
  ordinary step.
"""

from __future__ import annotations

import functools
import gc
import inspect
import sys
import weakref
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from gradprobe.policies.base import recorded_threshold
from gradprobe.pytorch.batch_fingerprint import InputFingerprints
from gradprobe.pytorch.data_loaders import LoaderWatch
from gradprobe.pytorch.loss_factors import divided_twice, loss_divisors
from gradprobe.pytorch.micro_batches import MicroBatchNorms
from gradprobe.pytorch.clip import TorchClipper, flag_skip_on_device, ops_for, restore_found_inf
from gradprobe.pytorch.naming import ParamNamer
from gradprobe.pytorch.replica_norms import ReplicaNorms
from gradprobe.pytorch.norms import foreach_norms, global_norm
from gradprobe.pytorch.sharding import full_norms, local
from gradprobe.pytorch.step_buffer import StepBuffer
from gradprobe.recording.batch_log import BatchLog
from gradprobe.recording.hook_guard import GuardedHooks
from gradprobe.recording.session import Session, StopTraining


# Gradient resets between backward() calls, before any optimizer has stepped, that show a loop updating by
# hand: more than a multi-task step's separate backward passes (or two threads' first steps) reset.
MANUAL_RESETS = 4
FEW_STEPS_RATIO = 128  # backward passes per recorded step beyond any common accumulation factor (<= 64)

_installed: list["TorchRecorder"] = []  # recorders installed in this process, newest last


def active_recorder() -> "TorchRecorder | None":
    """The recorder installed last in this process that is still recording, if any."""
    for recorder in reversed(_installed):
        if not recorder.disabled and not recorder.session.closed:
            return recorder
    return None


@functools.cache
def takes_closure_first(optimizer_class: type) -> bool:
    """Whether ``optimizer_class.step``'s first argument is a closure: named ``closure``
    (torch's convention), or unknown (``*args``). A ``step(fn)`` taking some other callable
    is an ordinary step."""
    try:
        parameters = list(inspect.signature(optimizer_class.step).parameters.values())[1:]
    except (TypeError, ValueError):
        return True
    if not parameters:
        return False
    return parameters[0].name == "closure" or parameters[0].kind is inspect.Parameter.VAR_POSITIONAL


class TorchRecorder(GuardedHooks):
    """Installs gradprobe's hooks into torch and feeds a :class:`~gradprobe.recording.session.Session`."""

    def __init__(self, session: Session, namer: ParamNamer | None = None):
        self.session = session
        self.namer = namer or ParamNamer()
        self.policy = session.policy
        self.clippers: dict[int, TorchClipper] = {}
        self._found_inf_before: dict[int, object] = {}
        self._warned: set[int] = set()
        self._reevaluates: set[int] = set()  # optimizers seen evaluating their closure twice in a step
        self.buffers: dict[int, StepBuffer] = {}
        self.backward_buffer: StepBuffer | None = None  # provisional (unregistered) while an optimizer may step
        self.optimizer_exists = False
        self.stepped = False  # an optimizer of the watched parameters has stepped
        self._optimizers: dict[int, weakref.ref] = {}  # the optimizers recorded, by id
        self._fallback: str | None = None  # why backward passes became steps while an optimizer existed
        self.backwards = 0  # backward() calls seen
        self._grad_marks: list[tuple[int, int]] = []  # (id, version) of each gradient after the last backward
        self._resets = 0  # gradient resets between backward() calls seen before any optimizer step
        self._pending_loss: torch.Tensor | None = None  # summed over the backward() calls since the last step
        self._backward_loss: torch.Tensor | None = None  # the last backward() call's
        self._zeroed = False  # a zero_grad() ran since this flag was last cleared
        self._step_loss: torch.Tensor | None = None
        self._scaled_loss: tuple[torch.Tensor, torch.Tensor] | None = None  # GradScaler.scale's (output, input)
        self._loss_divisors: list[tuple[float, ...]] = []  # per backward() since the last recorded step
        self._user_clip: tuple[torch.Tensor, float] | None = None
        self._stepped: StepBuffer | None = None  # the buffer whose optimizer stepped since the last backward
        self._pre_steps: dict[int, int] = {}
        self._handles: list[Any] = []
        self._patches: list[tuple[Any, str, Any]] = []
        self.batches = BatchLog(session.layout["rank"])  # which samples went into each step
        self.loaders = LoaderWatch(self.batches, session.skip_samples)
        self.inputs = InputFingerprints(self.batches)
        self.micro = MicroBatchNorms(torch.device("cpu"))  # re-made on the gradients' device at the first step
        self._measuring_micro = False  # the backward pass under way is measured by ``micro``
        self.replicas = ReplicaNorms()  # this rank's and the all-reduced gradient under DDP

    # -- installation -------------------------------------------------------------------

    def install(self, optimizers_may_exist: bool = True) -> "TorchRecorder":
        """Register the hooks and patches; idempotent per recorder. With ``optimizers_may_exist``
        False (torch has only just been imported) the heap is not searched for existing optimizers,
        which takes a full garbage collection."""
        self.session.set_framework("torch", torch.__version__)
        if optimizers_may_exist:
            gc.collect()  # optimizers that are already garbage must not turn off per-backward recording
            live = list(self._live_optimizers())
            self.optimizer_exists = bool(live)
            for optimizer in live:
                self._watch_inputs(optimizer)
        self._handles.append(register_optimizer_step_pre_hook(self._guard(self._pre_step)))
        self._handles.append(register_optimizer_step_post_hook(self._guard(self._post_step)))
        recorder = self

        original_backward = torch.Tensor.backward

        @functools.wraps(original_backward)
        def backward(tensor, *args, **kwargs):
            recorder._guard(recorder._before_backward)(tensor)
            result = original_backward(tensor, *args, **kwargs)
            recorder._guard(recorder._after_backward)()
            return result

        self._patch(torch.Tensor, "backward", backward)

        for owner in (torch.optim.Optimizer, torch.nn.Module):
            self._patch(owner, "zero_grad", self._noting_zero_grad(owner.zero_grad))

        original_init = torch.optim.Optimizer.__init__

        @functools.wraps(original_init)
        def optimizer_init(optimizer, *args, **kwargs):
            result = original_init(optimizer, *args, **kwargs)
            recorder._guard(recorder._new_optimizer)(optimizer)
            return result

        self._patch(torch.optim.Optimizer, "__init__", optimizer_init)

        if torch.distributed.is_available() and self.session.layout["world_size"] > 1:
            from torch.nn.parallel import DistributedDataParallel

            original_ddp_init = DistributedDataParallel.__init__

            @functools.wraps(original_ddp_init)
            def ddp_init(module, *args, **kwargs):
                original_ddp_init(module, *args, **kwargs)
                recorder._guard(recorder.replicas.watch)(module)

            self._patch(DistributedDataParallel, "__init__", ddp_init)

        from torch.amp import GradScaler

        original_scale, original_step = GradScaler.scale, GradScaler.step

        @functools.wraps(original_scale)
        def scale(scaler, outputs):
            scaled = original_scale(scaler, outputs)
            if isinstance(outputs, torch.Tensor) and outputs.numel() == 1:
                recorder._scaled_loss = (scaled, outputs)
            return scaled

        @functools.wraps(original_step)
        def step(scaler, optimizer, *args, **kwargs):
            before = recorder._pre_steps.get(id(optimizer), 0)
            result = original_step(scaler, optimizer, *args, **kwargs)
            if scaler.is_enabled() and recorder._pre_steps.get(id(optimizer), 0) == before:
                recorder._guard(recorder._record_skipped)(optimizer)
            return result

        self._patch(GradScaler, "scale", scale)
        self._patch(GradScaler, "step", step)

        import torch.nn.utils.clip_grad as clip_grad

        original_clip = clip_grad.clip_grad_norm_

        @functools.wraps(original_clip)
        def clip_grad_norm_(parameters, max_norm, *args, **kwargs):
            total = original_clip(parameters, max_norm, *args, **kwargs)
            recorder._guard(recorder._note_user_clip)(total, float(max_norm))
            return total

        self._patch(clip_grad, "clip_grad_norm_", clip_grad_norm_)
        self._patch(torch.nn.utils, "clip_grad_norm_", clip_grad_norm_)
        if not self.loaders.installed:
            self.loaders.install()
            self.session.listeners.append(self._write_batches)
        if self not in _installed:
            _installed.append(self)
        return self

    def _noting_zero_grad(self, original):
        recorder = self

        @functools.wraps(original)
        def zero_grad(owner, *args, **kwargs):
            recorder._zeroed = True
            recorder.micro.gradients_reset()
            return original(owner, *args, **kwargs)

        return zero_grad

    def remove(self) -> None:
        """Flush what is buffered, warn when the run recorded (far) fewer steps than the script
        trained, and undo every hook and patch."""
        buffer = self._provisional_buffer()
        if buffer is not None and buffer.index is None and buffer.steps:
            self._guard(self._fall_back)("the script ended without an optimizer step")
        self.flush()
        self.loaders.remove()
        self.inputs.remove()
        if self._write_batches in self.session.listeners:
            self.session.listeners.remove(self._write_batches)
        if self.loaders.dropped:
            self.session.writer.update(skipped_samples=dict(self.loaders.dropped))
        self._guard(self._check_shortfall)()
        if self in _installed:
            _installed.remove(self)
        for handle in self._handles:
            handle.remove()
        for owner, attr, original in reversed(self._patches):
            setattr(owner, attr, original)
        self._handles.clear()
        self._patches.clear()

    def flush(self) -> None:
        """Write every buffer's buffered steps, and the batches of the steps, to the run."""
        for buffer in self._all_buffers():
            try:
                buffer.flush()
            except Exception as exc:  # a failed flush must not hide the script's own outcome
                self._report(exc, "flush")
        self._write_batches()

    def _write_batches(self, *_tables) -> None:
        try:
            self.batches.write(self.session.writer.append)
        except Exception as exc:
            self._report(exc, "flush")

    def _patch(self, owner: Any, attr: str, replacement: Any) -> None:
        self._patches.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, replacement)

    def _all_buffers(self) -> list[StepBuffer]:
        return list(self.buffers.values()) + ([self.backward_buffer] if self.backward_buffer else [])

    # -- optimizer steps ----------------------------------------------------------------

    def _updates_watched(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether ``optimizer`` holds any parameter of the watched models."""
        return any(self.namer.watched(p) for g in optimizer.param_groups for p in g["params"])

    def _live_optimizers(self):
        """The optimizers on the heap that update a watched parameter (a scan of every object)."""
        return (o for o in gc.get_objects()
                if issubclass(type(o), torch.optim.Optimizer) and self._updates_watched(o))

    def _note_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """An optimizer of the watched parameters exists: backward passes are no longer steps."""
        if not self.optimizer_exists and self._updates_watched(optimizer):
            self.optimizer_exists = True

    def _new_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """The script built an optimizer: note it, and fingerprint the inputs of the models it updates."""
        self._note_optimizer(optimizer)
        if self._updates_watched(optimizer):
            self._watch_inputs(optimizer)

    def _watch_inputs(self, optimizer: torch.optim.Optimizer) -> None:
        """Fingerprint the inputs of the models ``optimizer`` updates (for steps without a DataLoader)."""
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if not self.inputs.covers(params):  # finding the models scans the heap: once per model
            self.inputs.attach(self.namer.roots_of(params))

    def _buffer(self, optimizer: torch.optim.Optimizer) -> StepBuffer | None:
        key = (  # what decides the buffer's parameters: group sizes and which ones train
            tuple(len(g["params"]) for g in optimizer.param_groups),
            tuple(p.requires_grad for g in optimizer.param_groups for p in g["params"]),
        )
        buffer = self.buffers.get(id(optimizer))
        if buffer is not None and buffer.layout_key == key:
            return buffer
        params = list({id(p): p for g in optimizer.param_groups for p in g["params"]}.values())
        params = [p for p in params if p.requires_grad and self.namer.watched(p)]
        if buffer is not None and buffer.param_ids == {id(p) for p in params}:
            buffer.layout_key = key
            return buffer
        if not params:
            return None
        if buffer is not None:
            buffer.flush()
            index = buffer.index
        else:
            index = self.session.add_optimizer(
                {
                    "class": type(optimizer).__name__,
                    "param_groups": len(optimizer.param_groups),
                    "lr": [g.get("lr") for g in optimizer.param_groups],
                }
            )
        previous = buffer
        buffer = StepBuffer(self.session, self.namer, index, params, known=previous.registered() if previous else None)
        buffer.steps = previous.steps if previous else 0
        buffer.layout_key = key
        self.buffers[id(optimizer)] = buffer
        return buffer

    def _pre_step(self, optimizer, args, kwargs):
        self._note_step(optimizer)
        self._pre_steps[id(optimizer)] = self._pre_steps.get(id(optimizer), 0) + 1
        at = 1 if args and args[0] is optimizer else 0  # torch passes the bound ``self`` in ``args``
        if "closure" in kwargs and callable(kwargs["closure"]):
            return args, {**kwargs, "closure": self._wrap_closure(optimizer, kwargs["closure"])}
        if len(args) > at and callable(args[at]) and takes_closure_first(type(optimizer)):
            return (*args[:at], self._wrap_closure(optimizer, args[at]), *args[at + 1:]), kwargs
        self._record(optimizer)
        return None

    def _wrap_closure(self, optimizer, closure):
        """``closure`` recording (and clipping) the gradient of its first evaluation in the step.

        Optimizers that evaluate the closure once (SGD, Adam... under Lightning's automatic
        optimisation) are clipped right after it returns, before the update. Those that
        evaluate it again (LBFGS, or any optimizer seen doing so) update with later gradients,
        so they are recorded but not clipped.
        """
        evaluations = [0]

        @functools.wraps(closure)
        def wrapped(*args, **kwargs):
            evaluations[0] += 1
            if evaluations[0] == 2:
                self._guard(self._note_reevaluation)(optimizer)
            if evaluations[0] > 1:
                return closure(*args, **kwargs)
            before, self._pending_loss, self._zeroed = self._pending_loss, None, False
            loss = closure(*args, **kwargs)
            if before is not None and not self._zeroed:  # the closure added to gradients accumulated before it
                self._pending_loss = before if self._pending_loss is None else before + self._pending_loss
            self._guard(self._record)(optimizer, clip=id(optimizer) not in self._reevaluates
                                      and not isinstance(optimizer, torch.optim.LBFGS))
            return loss

        return wrapped

    def _note_reevaluation(self, optimizer) -> None:
        """``optimizer`` evaluated its closure a second time in one step: clip it no more."""
        if id(optimizer) in self._reevaluates or isinstance(optimizer, torch.optim.LBFGS):
            return
        self._reevaluates.add(id(optimizer))
        if self.policy is not None:
            self._warned.add(id(optimizer))
            print(f"gradprobe: {type(optimizer).__name__}.step(closure) evaluates its closure more than once "
                  "per step, so from now on it is recorded but not clipped (this step's first gradient "
                  "was clipped); clip inside the closure with gradprobe.clipper()", file=sys.stderr)

    def _post_step(self, optimizer, args, kwargs):
        if id(optimizer) in self._found_inf_before:
            restore_found_inf(optimizer, self._found_inf_before.pop(id(optimizer)))
        buffer = self.buffers.get(id(optimizer))
        self._stepped = buffer
        if buffer is not None:
            buffer.updates.after()
        if buffer is not None and self.session.count_step(self._slowest_steps()):
            raise StopTraining(f"max steps ({self.session.max_steps}) reached")

    def _slowest_steps(self) -> int:
        """Steps of the optimizer that has taken fewest, among those still alive: with several
        optimizers (a GAN), ``max_steps`` counts the slowest one's, so each takes at least that many."""
        live = [buffer.steps for key, buffer in self.buffers.items()
                if key in self._optimizers and self._optimizers[key]() is not None]
        return min(live, default=0)

    def _note_step(self, optimizer) -> None:
        """``optimizer`` steps (or its step was skipped on overflow): the loop uses its optimizer."""
        self._note_optimizer(optimizer)
        if not self.stepped and self._updates_watched(optimizer):
            self.stepped = True
            if self.backward_buffer is not None and self.backward_buffer.index is None:
                self.backward_buffer = None  # its backward passes were this step's micro-batches

    def _record_skipped(self, optimizer) -> None:
        self._note_step(optimizer)
        self._record(optimizer, skipped=True, clip=False)
        self._post_step(optimizer, (), {})

    def _note_user_clip(self, total: torch.Tensor, max_norm: float) -> None:
        """A script's ``clip_grad_norm_`` ran: recorded with the next step, or noted as coming after one."""
        stepped = self._stepped
        if stepped is None:
            self._user_clip = (total, max_norm)
        else:
            self.session.note_optimizer_event(stepped.index, "clip_after_step", stepped.steps - 1, max_norm=max_norm)

    def _record(self, optimizer, skipped: bool = False, clip: bool = True) -> None:
        """Record the optimizer's gradients; apply the clip policy when ``clip`` (the step follows)."""
        buffer = self._buffer(optimizer)
        if self._pending_loss is not None:
            self._step_loss, self._pending_loss = self._pending_loss, None
        loss = self._step_loss
        user_clip, self._user_clip = self._user_clip, None
        divisors, self._loss_divisors = self._loss_divisors, []
        if buffer is None:
            return
        if divided_twice(divisors):
            self.session.note_optimizer_event(buffer.index, "loss_divided_twice", buffer.steps,
                                              micro_batches=len(divisors))
        self.batches.step(buffer.index, buffer.steps)
        ref = self._optimizers.get(id(optimizer))
        if ref is None or ref() is not optimizer:
            self._optimizers[id(optimizer)] = weakref.ref(optimizer)
        self._note_micro_batches(buffer)
        if buffer.sampled and buffer.weights is None and self.session.sampling.signals:
            present = [i for i, p in enumerate(buffer.params) if p.grad is not None]
            buffer.updates.before(buffer.steps, [buffer.params[i] for i in present], present)
        grad_scale = getattr(optimizer, "grad_scale", None)
        found_inf = getattr(optimizer, "found_inf", None)
        stats = buffer.measure(grad_scale if isinstance(grad_scale, torch.Tensor) else None)
        if isinstance(found_inf, torch.Tensor):
            skipped = found_inf.reshape(-1)[0] > 0
        if self.policy is not None and not clip and not skipped:
            self._warn_unclipped(optimizer)
        if self.policy is not None and clip:
            if isinstance(grad_scale, torch.Tensor):  # fused AMP: unscale here so the policy sees true values
                torch._foreach_mul_([buffer.params[i].grad for i in stats.present], 1.0 / stats.grad_scale)
                optimizer.grad_scale = None
            self._clip(buffer, stats, loss, skipped, optimizer, user_clip)
            return
        if user_clip is None:
            buffer.record(stats, loss=loss, skipped=skipped)
            return
        pre_norm, scale = self._before_user_clip(buffer, stats, user_clip)
        buffer.record(stats, loss=loss, skipped=skipped, pre_norm=pre_norm, scale=scale, threshold=user_clip[1])

    def _note_micro_batches(self, buffer: StepBuffer) -> None:
        """The step ends the backward passes since the last one: note their micro-batch norms, or
        under DDP this rank's and the all-reduced gradient's."""
        measured = self.micro.take()
        if measured is not None and buffer.params is self.micro.params:
            buffer.note_micro_batches(measured)
        if self.session.layout["world_size"] > 1:
            replicas = self.replicas.take(self.session.layout["world_size"])
            if replicas is not None and self._signal_buffer() is buffer:
                buffer.note_micro_batches(replicas)

    def _signal_buffer(self) -> StepBuffer | None:
        """The buffer whose step under way measures the gradient noise signals: that of the one
        optimizer that steps, on its sampled steps (none with several optimizers, before the first
        step, with shards or with the signals off). Across ranks they are read from DDP's buckets
        (:mod:`gradprobe.pytorch.replica_norms`), else from the micro-batches."""
        if len(self.buffers) != 1 or not self.session.sampling.signals:
            return None
        buffer = next(iter(self.buffers.values()))
        return buffer if buffer.weights is None and buffer.sampled else None

    def _micro_batch_params(self) -> list[torch.Tensor] | None:
        """The parameters whose micro-batch gradients are measured in the step under way: those of
        :meth:`_signal_buffer`, in a single process."""
        buffer = self._signal_buffer()
        if buffer is None or self.session.layout["world_size"] > 1:
            return None
        if self.micro.device != buffer.device:
            self.micro = MicroBatchNorms(buffer.device)
        return buffer.params

    @staticmethod
    def _before_user_clip(buffer: StepBuffer, stats, user_clip) -> tuple[torch.Tensor, torch.Tensor]:
        """The global norm before the script's own ``clip_grad_norm_`` (its returned total) and the
        scale that call applied."""
        pre_norm = user_clip[0].detach().to(buffer.device, torch.float32)
        return pre_norm, torch.clamp(stats.global_norm / pre_norm, max=1.0)

    def _clip(self, buffer: StepBuffer, stats, loss, amp_skipped, optimizer=None, user_clip=None) -> None:
        """Apply the session's clip policy to the measured gradients and record the step.

        The recorded ``global_norm`` is the norm before any clipping: before the script's own
        ``clip_grad_norm_`` when ``user_clip`` (its returned total and ``max_norm``) says it ran,
        and the recorded scale is then both clips' together, as under ``profile``.
        The policy reuses the norms just measured (no second pass). A skipped
        update is prevented without a host sync for fused optimizers (through
        ``found_inf``, as ``GradScaler`` does); other optimizers read the skip
        flag once and have their gradients set to ``None`` so that the step
        leaves parameters and optimizer state untouched.
        """
        clipper = self.clippers.get(buffer.index)
        if clipper is None:
            clipper = self.clippers[buffer.index] = TorchClipper(self.policy)
        params = [buffer.params[i] for i in stats.present]
        grads = [local(p.grad).detach() for p in params]  # same storage; no graph under create_graph=True
        if stats.weights is None:
            result = clipper.clip(grads, stats.norms, stats.global_norm, params)
            pre_norm, post_norm = result.norm, result.post_norm
        else:  # sharded: the policy needs the full norms; the run stores this rank's part of them
            norms = full_norms(stats.norms, stats.weights)
            result = clipper.clip(grads, norms, global_norm(norms), [local(p) for p in params])
            pre_norm = stats.global_norm
            post_norm = global_norm(foreach_norms(grads, 2.0, buffer.device) * stats.weights)
        if self.policy.can_skip and optimizer is not None:
            self._prevent_update(optimizer, params, result.skipped)
        threshold = recorded_threshold(ops_for(buffer.device), result)
        scale = result.scale
        if user_clip is not None:
            pre_norm, user_scale = self._before_user_clip(buffer, stats, user_clip)
            scale = scale * user_scale
        buffer.record(stats, loss=loss, skipped=result.skipped | amp_skipped,
                      pre_norm=pre_norm, post_norm=post_norm, scale=scale, threshold=threshold)

    def _warn_unclipped(self, optimizer) -> None:
        if id(optimizer) not in self._warned:
            self._warned.add(id(optimizer))
            print(f"gradprobe: {type(optimizer).__name__}.step(closure) evaluates the gradient inside the "
                  "step, so it is recorded but not clipped; clip inside the closure with gradprobe.clipper()",
                  file=sys.stderr)

    def _prevent_update(self, optimizer, params: list[torch.Tensor], skipped: torch.Tensor) -> None:
        on_device, previous = flag_skip_on_device(optimizer, skipped)
        if on_device:
            self._found_inf_before[id(optimizer)] = previous
        elif bool(skipped):  # one host read per step, as GradScaler.step does
            for p in params:
                p.grad = None

    # -- backward passes ----------------------------------------------------------------

    def _before_backward(self, tensor: torch.Tensor) -> None:
        params = self._micro_batch_params() if self.stepped else None
        self._measuring_micro = params is not None
        if params is not None:
            self.micro.before_backward(params, self.batches.pending_batch)
        self.batches.backward()
        if self.session.layout["world_size"] > 1 and self.session.sampling.signals:
            self.replicas.hook_modules()
            self.replicas.measuring = self._signal_buffer() is not None
        buffer = self._provisional_buffer()
        if buffer is not None and buffer.index is None and self._gradients_reset():
            self._resets += 1
            if self._resets >= MANUAL_RESETS:
                self._fall_back(f"its gradients were reset between backward() calls {self._resets} times with "
                                "no optimizer step")
        if buffer is not None and buffer.index is not None and not self.stepped \
                and self.session.count_step(buffer.steps):
            raise StopTraining(f"max steps ({self.session.max_steps}) reached")
        self._stepped = None
        self._step_loss = self._backward_loss = None
        if tensor.numel() != 1 or not tensor.is_floating_point():
            return
        loss = tensor
        if self._scaled_loss is not None and self._scaled_loss[0] is tensor:
            loss = self._scaled_loss[1]
        self._scaled_loss = None
        if len(self._loss_divisors) < FEW_STEPS_RATIO:
            self._loss_divisors.append(loss_divisors(loss))
        loss = self._backward_loss = loss.detach().reshape(()).float()
        self._pending_loss = loss if self._pending_loss is None else self._pending_loss + loss

    def _after_backward(self) -> None:
        """Per-backward recording, until an optimizer steps.

        With no optimizer, every ``backward()`` is a step. While an optimizer exists
        but has not stepped, the backward passes are recorded provisionally: dropped
        at its first step (they were that step's micro-batches), kept as steps once
        the loop shows it updates without the optimizer (gradients reset between
        backward passes :data:`MANUAL_RESETS` times), when the buffer fills, or when
        the script ends.
        """
        self.backwards += 1
        if self.stepped:
            if self._measuring_micro:
                self.micro.after_backward()
            return
        buffer = self.backward_buffer
        if buffer is None:
            params = self.namer.trainable_params()
            if not params:
                return
            index = None if self.optimizer_exists else self.session.add_optimizer({"class": None, "kind": "backward"})
            buffer = self.backward_buffer = StepBuffer(self.session, self.namer, index, params)
        elif buffer.index is None and buffer.full:
            self._fall_back(f"{buffer.steps} backward() calls with no optimizer step")
        loss = self._backward_loss
        if buffer.index is not None:  # a step: the next one's loss starts afresh
            self._pending_loss = None
        if buffer.index is not None:
            self.batches.step(buffer.index, buffer.steps)
        stats = buffer.measure()
        if self.policy is not None and buffer.index is not None:
            self._clip(buffer, stats, loss, False)
        else:
            buffer.record(stats, loss=loss)
        if buffer.index is None:
            self._grad_marks = [(id(p.grad), p.grad._version) for p in buffer.params if p.grad is not None]

    def _provisional_buffer(self) -> StepBuffer | None:
        """The per-backward buffer; a provisional one is dropped once an optimizer has stepped (another
        thread's backward() may have made it while the first step was dropping the provisional passes)."""
        if self.backward_buffer is not None and self.backward_buffer.index is None and self.stepped:
            self.backward_buffer = None
        return self.backward_buffer

    def _gradients_reset(self) -> bool:
        """Whether the gradients of the last backward() were set to None, replaced or zeroed since."""
        params = self.backward_buffer.params
        current = [(id(p.grad), p.grad._version) for p in params if p.grad is not None]
        return current != self._grad_marks

    def _fall_back(self, why: str) -> None:
        """Keep the provisional backward passes as steps: the script's optimizer does not step."""
        names = sorted({type(o).__name__ for o in self._live_optimizers()})
        self._fallback = f"the script's optimizer ({', '.join(names) or 'unknown'}) had not stepped ({why})"
        index = self.session.add_optimizer({"class": None, "kind": "backward"})
        self.backward_buffer.register(index)
        self.backward_buffer.flush()

    def _check_shortfall(self) -> None:
        """Warn (stderr and run.json) when backward passes ran but (almost) no step was recorded, unless
        the script was interrupted or crashed (which explains it)."""
        if self.session.ending not in (None, "finished"):
            return
        recorded = sum(buffer.steps for buffer in self._all_buffers() if buffer.index is not None)
        if self._fallback is not None:
            done = self.backward_buffer.steps if self.backward_buffer is not None else 0
            self.session.warn(f"{self._fallback}: {done} backward() calls recorded as steps of their own"
                              + (", then it stepped" if self.stepped else "; it never stepped")
                              + ("; the updates before gradprobe noticed were not clipped" if self.policy is not None else ""))
        elif self.backwards and not recorded:
            self.session.warn(f"{self.backwards} backward() calls, but none reached a parameter of the "
                              "script's models that requires grad: nothing recorded")
        elif self.backwards >= FEW_STEPS_RATIO * recorded > 0:
            self.session.warn(f"{self.backwards} backward() calls but only {recorded} steps recorded: "
                              "an optimizer of the script's models steps rarely, or the loop updates "
                              "some parameters by hand")
