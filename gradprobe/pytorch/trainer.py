"""Recording driven by a trainer's callbacks (Lightning, Hugging Face), with no global hooks.

Trainers call back right before each optimizer step, once the gradients are
final (accumulated over micro-batches, unscaled from AMP). A callback hands
that optimizer to :meth:`TrainerHooks.before_step`, and gradprobe records,
and with a clip policy clips, exactly the gradients the step is about to use,
through the same step buffers, layer names and clip appliers as
:func:`gradprobe.watch`. Nothing is patched in torch: only the trainer's model
is recorded, and only while its trainer runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping

import torch

from gradprobe.policies import Policy
from gradprobe.pytorch.naming import ParamNamer
from gradprobe.pytorch.recorder import TorchRecorder
from gradprobe.recording.options import SessionOptions
from gradprobe.recording.session import DEFAULT_EVERY, DEFAULT_FLUSH_EVERY, DEFAULT_FLUSH_SECONDS, Session
from gradprobe.recording.session import describe_exception
from gradprobe.store import DEFAULT_ROOT


def outcome(exc: BaseException | None) -> tuple[str, str | None]:
    """The run status and error message for training that ended with ``exc`` (``None``: finished)."""
    if exc is None:
        return "finished", None
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", "KeyboardInterrupt"
    return "crashed", describe_exception(exc)


class TrainerHooks:
    """One run recorded from a trainer's callbacks.

    ``models``: ``{label: module}`` whose parameters are recorded (one entry:
    layer names are the module's own parameter names) into ``session``, whose
    clip policy is applied in :meth:`before_step`.
    """

    def __init__(self, models: Mapping[str, torch.nn.Module], session: Session):
        self.session = session
        self.session.set_framework("torch", torch.__version__)
        self.recorder = TorchRecorder(self.session, ParamNamer(models))  # fed by callbacks: never installed
        self._post_hooks: dict[int, object] = {}

    @property
    def path(self) -> Path:
        """The run directory."""
        return self.session.path

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self.session.closed

    @property
    def stopped(self) -> bool:
        """Whether an internal error stopped the recording (and its clipping) while training went on."""
        return self.recorder.disabled

    def guard(self, fn: Callable) -> Callable:
        """``fn`` wrapped so that its failures stop the recording (with a warning on stderr) and never
        reach the training loop; once recording stopped, the wrapper does nothing."""
        return self.recorder._guard(fn)

    def add_loss(self, loss: torch.Tensor) -> None:
        """Count a loss the trainer back-propagates (summed until the next step, as watch() does)."""
        self.guard(self.recorder._before_backward)(loss)

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Record (and clip, with a policy) the gradients ``optimizer`` is about to step with;
        call it once the gradients are final."""
        self.guard(self._before_step)(optimizer)

    def _before_step(self, optimizer: torch.optim.Optimizer) -> None:
        if id(optimizer) not in self._post_hooks:  # undoes what clipping set for the step (fused skip flag)
            self._post_hooks[id(optimizer)] = optimizer.register_step_post_hook(
                lambda opt, args, kwargs: self.guard(self.recorder._post_step)(opt, args, kwargs)
            )
        self.recorder._record(optimizer)

    def close(self, exc: BaseException | None = None) -> None:
        """Flush, drop the optimizer hooks and mark the run finished (or crashed with ``exc``)."""
        if self.session.closed:
            return
        for handle in self._post_hooks.values():
            handle.remove()
        self._post_hooks.clear()
        self.recorder.remove()
        status, error = outcome(exc)
        self.session.close(status, error=error)


class TrainerCallbackBase:
    """What the Lightning and Hugging Face callbacks share: their options, checked when the callback
    is made, and the :class:`TrainerHooks` of the run being recorded (``recording``, ``path``).

    ``out``: folder for run directories; ``every``: per-layer statistics
    every N optimizer steps (global norm, loss and clip scale every step);
    ``name``: the run's folder name (default: timestamped); ``clip``: a clip
    policy spec applied right before each optimizer step, instead of the
    trainer's own clipping; ``flush_every`` / ``flush_seconds``: how often
    buffered statistics are written.
    """

    def __init__(
        self,
        out: str | os.PathLike = DEFAULT_ROOT,
        every: int = DEFAULT_EVERY,
        name: str | None = None,
        clip: "str | Policy | None" = None,
        flush_every: int = DEFAULT_FLUSH_EVERY,
        flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    ):
        super().__init__()
        self.options = SessionOptions.parse(out, name, every, flush_every, flush_seconds, clip)
        self.recording: TrainerHooks | None = None
        self.path: Path | None = None
