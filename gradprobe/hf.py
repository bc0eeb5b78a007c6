"""Hugging Face ``Trainer`` callback: ``Trainer(..., callbacks=[GradProbeCallback(out="runs")])``.

The callback records in ``on_pre_optimizer_step``, which the Trainer calls
once the gradients of a step are final (accumulated over
``gradient_accumulation_steps`` and unscaled from AMP), right before the
optimizer steps. Layer names are the model's parameter names.

Clipping: the Trainer clips to ``max_grad_norm`` (1.0 by default) *before*
``on_pre_optimizer_step``, which would leave only post-clip norms to record.
So, for the duration of ``train()``, gradprobe applies that clipping itself
as ``global-norm:max=<max_grad_norm>`` (the same formula as
``torch.nn.utils.clip_grad_norm_``) and sets ``max_grad_norm`` to 0, putting
it back when training ends: the run records the pre-clip norm, the post-clip
norm and the scale, and the Trainer's logged ``grad_norm`` stays the pre-clip
norm. ``clip=`` replaces the Trainer's clipping with another policy. Should
an internal error stop the recording, the Trainer's own clipping is given
back at once, so training goes on as it would without gradprobe.

The loss recorded is the one the model returns (``outputs.loss``) over the
step's micro-batches: their mean, or their sum when the Trainer normalised
each by the number of items in the whole accumulated batch
(``num_items_in_batch``); this is the figure the Trainer logs as ``loss``.
Losses computed outside the model (a custom ``compute_loss``) are not seen.

The Trainer has no callback for an exception: a run whose ``train()`` raised
stays ``running`` until the next ``train()`` or the end of the process, which
mark it ``crashed``.
"""

from __future__ import annotations

import atexit
import sys
from collections.abc import Mapping
from typing import Any

import torch

from gradprobe.errors import GradprobeError
from gradprobe.policies import parse_spec
from gradprobe.pytorch.trainer import TrainerCallbackBase, TrainerHooks

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise GradprobeError("gradprobe.hf needs the `transformers` package: pip install 'gradprobe[hf]'") from exc

if not hasattr(TrainerCallback, "on_pre_optimizer_step"):  # pragma: no cover - depends on the environment
    raise GradprobeError("gradprobe.hf needs a transformers version with TrainerCallback.on_pre_optimizer_step "
                         "(4.45 or newer): pip install -U 'gradprobe[hf]'")


class _StepLoss:
    """The training losses the model returned since the last optimizer step."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.normalised_by_items = False

    def forward_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        """Keep ``output.loss`` of a training forward pass (a module forward hook with kwargs)."""
        if not (module.training and torch.is_grad_enabled()):
            return
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self.losses.append(loss.detach().reshape(()).float())
            self.normalised_by_items = kwargs.get("num_items_in_batch") is not None

    def take(self) -> torch.Tensor | None:
        """The step's loss (see the module docstring), and start a new step."""
        if not self.losses:
            return None
        total = torch.stack(self.losses).sum()
        count, self.losses = len(self.losses), []
        return total if self.normalised_by_items else total / count


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` wrapper."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer


class GradProbeCallback(TrainerCallbackBase, TrainerCallback):
    """Record gradient statistics (and optionally clip) during ``Trainer.train``.

    Options as for :class:`~gradprobe.pytorch.trainer.TrainerCallbackBase`
    (``out``, ``every``, ``name``, ``clip`` replacing the Trainer's
    ``max_grad_norm`` clipping, ``flush_every``, ``flush_seconds``). ``path``
    is the run directory once training has started; it is printed on stderr
    when training starts and ends.

    Example::

        probe = GradProbeCallback(out="runs", every=10)
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[probe])
        trainer.train()
        run = gradprobe.load_run(probe.path)
    """

    _loss_hook: Any = None  # the forward hook that collects the model's losses during train()
    _trainer_clip: tuple[Any, float] | None = None  # (args, max_grad_norm) while gradprobe clips in its place
    _announce = True

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: torch.nn.Module | None = None, **kwargs: Any) -> None:
        self._finish(RuntimeError("train() ended without on_train_end"))
        policy = self.options.policy
        if args.max_grad_norm and args.max_grad_norm > 0:
            if policy is None:
                policy = parse_spec(f"global-norm:max={float(args.max_grad_norm)!r}")
            elif state.is_world_process_zero:
                print(f"gradprobe: clip={policy} replaces the Trainer's max_grad_norm={args.max_grad_norm}",
                      file=sys.stderr)
            self._trainer_clip = (args, args.max_grad_norm)
            args.max_grad_norm = 0.0
        self.recording = TrainerHooks({type(model).__name__: model}, self.options.session(policy))
        self.path = self.recording.path
        self._loss = _StepLoss()
        self._loss_hook = model.register_forward_hook(self.recording.guard(self._loss.forward_hook),
                                                      with_kwargs=True)
        atexit.register(self._finish, RuntimeError("the process exited during train()"))
        self._announce = state.is_world_process_zero
        if self._announce:
            print(f"gradprobe: recording gradients to {self.path}", file=sys.stderr)

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                              model: torch.nn.Module | None = None, optimizer: Any = None, **kwargs: Any) -> None:
        if self.recording is None or self.recording.closed:
            return
        self.recording.guard(self._record_step)(optimizer)
        if self.recording.stopped and self._trainer_clip is not None:
            self._give_back_clipping()  # the Trainer clips the next steps itself, gradprobe clips this one
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)

    def _record_step(self, optimizer: Any) -> None:
        loss = self._loss.take()
        if loss is not None:
            self.recording.add_loss(loss)
        self.recording.before_step(_torch_optimizer(optimizer))

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if self._finish(None) and self._announce:
            print(f"gradprobe: run recorded in {self.path} (gradprobe report {self.path})", file=sys.stderr)

    def _give_back_clipping(self) -> None:
        if self._trainer_clip is not None:
            args, value = self._trainer_clip
            args.max_grad_norm, self._trainer_clip = value, None

    def _finish(self, exc: BaseException | None) -> bool:
        """Close the open recording (if any) and undo what ``on_train_begin`` set; True if one was open."""
        self._give_back_clipping()
        if self._loss_hook is not None:
            self._loss_hook.remove()
            self._loss_hook = None
        if self.recording is None or self.recording.closed:
            return False
        atexit.unregister(self._finish)
        self.recording.close(exc)
        return True
