"""PyTorch Lightning callback: ``Trainer(callbacks=[GradProbe(out="runs")])``.

The callback records in ``on_before_optimizer_step``, which Lightning calls
after its closure has run the forward and backward passes (and after AMP
unscaling), right before the optimizer steps: the gradients recorded are the
ones the update uses, after gradient accumulation. Layer names are the
LightningModule's parameter names. The loss is the one Lightning
back-propagates (``on_before_backward``), summed over the accumulated
micro-batches of a step, so the mean micro-batch loss when Lightning divides
by ``accumulate_grad_batches``.

Clipping: ``GradProbe(clip="autoclip:p=10")`` applies a gradprobe clip policy
right there and records the pre- and post-clip norms and the scale. Lightning's
own ``gradient_clip_val`` clips after ``on_before_optimizer_step``, out of the
recorder's sight; so that the run still records what that clipping does,
gradprobe applies it itself for the duration of the fit (``global-norm:max=V``
for the default norm algorithm, ``value:max=V`` for ``"value"``, the same math
as Lightning's) and puts ``gradient_clip_val`` back afterwards (at once, should
an internal error stop the recording). A ``clip=`` spec replaces Lightning's
clipping instead. A LightningModule that overrides
``configure_gradient_clipping`` keeps its own clipping; the run then records
the norms before it.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from gradprobe.errors import GradprobeError
from gradprobe.policies import parse_spec
from gradprobe.pytorch.trainer import TrainerCallbackBase, TrainerHooks

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise GradprobeError("gradprobe.lightning needs the `lightning` package: "
                         "pip install 'gradprobe[lightning]'") from exc


def _lightning_clip_spec(trainer: "pl.Trainer") -> str | None:
    """The gradprobe spec equivalent to the trainer's ``gradient_clip_val`` setting, if any."""
    value = trainer.gradient_clip_val
    if not value:
        return None
    algorithm = getattr(trainer.gradient_clip_algorithm, "value", trainer.gradient_clip_algorithm) or "norm"
    return f"{'value' if algorithm == 'value' else 'global-norm'}:max={float(value)!r}"


def _unscaled_loss(loss: torch.Tensor, trainer: "pl.Trainer") -> torch.Tensor:
    """``loss`` as computed, undoing the AMP loss scaling Lightning applies before backward."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return loss
    return loss.detach() / scaler._get_scale_async()  # the scale tensor, read without a host sync


class GradProbe(TrainerCallbackBase, pl.Callback):
    """Record gradient statistics (and optionally clip) during ``Trainer.fit``.

    Options as for :class:`~gradprobe.pytorch.trainer.TrainerCallbackBase`
    (``out``, ``every``, ``name``, ``clip``, ``flush_every``,
    ``flush_seconds``); ``path`` is the run directory once fitting has started.

    Example::

        probe = GradProbe(out="runs", every=10)
        trainer = L.Trainer(max_epochs=3, callbacks=[probe])
        trainer.fit(model, loader)
        run = gradprobe.load_run(probe.path)
    """

    _lightning_clip: Any = None  # the trainer's gradient_clip_val while gradprobe clips in its place

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        policy = self.options.policy
        lightning_spec = _lightning_clip_spec(trainer)
        if lightning_spec is not None and self._module_clips(pl_module):
            print(f"gradprobe: {type(pl_module).__name__}.configure_gradient_clipping clips after gradprobe reads "
                  "the gradients; the run records the norms before that clipping", file=sys.stderr)
        elif lightning_spec is not None:
            if policy is None:
                policy = parse_spec(lightning_spec)
            else:
                print(f"gradprobe: clip={policy} replaces Trainer(gradient_clip_val={trainer.gradient_clip_val})",
                      file=sys.stderr)
            self._lightning_clip = trainer.gradient_clip_val
            trainer.gradient_clip_val = None
        self.recording = TrainerHooks({type(pl_module).__name__: pl_module},
                                          self.options.session(policy))
        self.path = self.recording.path

    def on_before_backward(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                           loss: torch.Tensor) -> None:
        if self._recording_open():
            self.recording.guard(self._add_loss)(loss, trainer)

    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                                 optimizer: torch.optim.Optimizer) -> None:
        if self._recording_open():
            self.recording.before_step(optimizer)
            if self.recording.stopped:  # Lightning clips right after this hook: give its clipping back
                self._give_back_clipping(trainer)

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._finish(trainer, None)

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                     exception: BaseException) -> None:
        self._finish(trainer, exception)

    def _add_loss(self, loss: torch.Tensor, trainer: "pl.Trainer") -> None:
        self.recording.add_loss(_unscaled_loss(loss, trainer))

    def _recording_open(self) -> bool:
        return self.recording is not None and not self.recording.closed

    @staticmethod
    def _module_clips(pl_module: "pl.LightningModule") -> bool:
        return type(pl_module).configure_gradient_clipping is not pl.LightningModule.configure_gradient_clipping

    def _give_back_clipping(self, trainer: "pl.Trainer") -> None:
        if self._lightning_clip is not None:
            trainer.gradient_clip_val, self._lightning_clip = self._lightning_clip, None

    def _finish(self, trainer: "pl.Trainer", exc: BaseException | None) -> None:
        self._give_back_clipping(trainer)
        if self._recording_open():
            self.recording.close(exc)
