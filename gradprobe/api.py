"""The Python API for people who own their training loop: :func:`watch` and :func:`clipper`."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from gradprobe.policies import Policy, as_policy
from gradprobe.recording.session import DEFAULT_EVERY, DEFAULT_FLUSH_EVERY, DEFAULT_FLUSH_SECONDS, Sampling, Session
from gradprobe.recording.session import StopTraining, describe_exception
from gradprobe.store import DEFAULT_ROOT, Run, load_run

if TYPE_CHECKING:
    from gradprobe.pytorch.clip import TorchClipper


class Recording:
    """Handle on a live recording, yielded by :func:`watch`."""

    def __init__(self, session: Session):
        self._session = session

    @property
    def path(self) -> Path:
        """The run directory being written."""
        return self._session.path

    def flush(self) -> None:
        """Write everything buffered so far (one device synchronisation)."""
        for recorder in self._session.recorders:
            recorder.flush()

    def load(self) -> Run:
        """Flush, then read the run as recorded so far."""
        self.flush()
        return load_run(self.path)


def _models(model: Any) -> Mapping[str, Any]:
    if model is None:
        return {}
    if isinstance(model, Mapping):
        return dict(model)
    if isinstance(model, (list, tuple)):
        return {f"{type(m).__name__}{i}": m for i, m in enumerate(model)}
    return {type(model).__name__: model}


def _is_keras(models: Mapping[str, Any]) -> bool:
    keras = sys.modules.get("keras")
    return keras is not None and any(isinstance(m, keras.Model) for m in models.values())


def _recorder(session: Session, models: Mapping[str, Any]):
    """The TensorFlow recorder for Keras models (or no model in a process that imported
    TensorFlow and not PyTorch), the PyTorch recorder otherwise."""
    if _is_keras(models) or (not models and "tensorflow" in sys.modules and "torch" not in sys.modules):
        from gradprobe.tensorflow import TFRecorder, VariableNamer

        return TFRecorder(session, VariableNamer(models) if models else None)
    from gradprobe.pytorch.naming import ParamNamer
    from gradprobe.pytorch.recorder import TorchRecorder

    return TorchRecorder(session, ParamNamer(models) if models else None)


@contextmanager
def watch(
    model: Any = None,
    out: str | os.PathLike = DEFAULT_ROOT,
    name: str | None = None,
    every: int = DEFAULT_EVERY,
    flush_every: int = DEFAULT_FLUSH_EVERY,
    flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    max_steps: int | None = None,
    clip: "str | Policy | None" = None,
    signals: bool = True,
) -> Iterator[Recording]:
    """Record gradient statistics of the training done inside the ``with`` block.

    ``model``: a ``torch.nn.Module`` or a Keras model, a list of them, or a
    ``{label: model}`` dict (labels prefix the layer names); ``None`` records
    every optimizer (of TensorFlow when the process imported it and not PyTorch).
    ``every``: per-layer statistics every N optimizer steps (global norm every
    step). ``max_steps``: leave the block (cleanly) after N optimizer steps.
    ``clip``: a clip policy spec (e.g. ``"autoclip:p=10"``) applied right before
    every optimizer step, reusing the norms it records (no second pass).
    ``signals=False``: leave out the applied-update and micro-batch norms of
    sampled steps (update-to-weight ratios, noise scale), for the cheapest recording.

    Example::

        with gradprobe.watch(model, out="runs") as rec:
            for x, y in data:
                opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
        run = gradprobe.load_run(rec.path)
    """
    session = Session(out=out, name=name, sampling=Sampling(every, flush_every, flush_seconds, signals),
                      max_steps=max_steps, clip=clip)
    models = _models(model)
    session.recorders.append(_recorder(session, models).install())
    status, error, reason = "finished", None, None
    try:
        yield Recording(session)
    except StopTraining as exc:
        reason = str(exc)
    except KeyboardInterrupt:
        status, error = "interrupted", "KeyboardInterrupt"
        raise
    except BaseException as exc:
        status, error = "crashed", describe_exception(exc)
        raise
    finally:
        for recorder in session.recorders:
            recorder.remove()
        session.close(status, error=error, stop_reason=reason)


def clipper(spec: "str | Policy") -> "TorchClipper":
    """A PyTorch clipper for ``spec``: ``norm, scale = clipper(model.parameters())``.

    The spec is checked immediately (a bad spec raises
    :class:`~gradprobe.errors.GradprobeError` before any training). See
    :class:`~gradprobe.pytorch.clip.TorchClipper`.
    """
    policy = as_policy(spec)
    from gradprobe.pytorch.clip import TorchClipper

    return TorchClipper(policy)
