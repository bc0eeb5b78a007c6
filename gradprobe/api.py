"""The Python API for people who own their training loop."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from gradprobe.session import DEFAULT_EVERY, DEFAULT_FLUSH_EVERY, DEFAULT_FLUSH_SECONDS, Sampling, Session
from gradprobe.session import StopTraining, describe_exception
from gradprobe.policies import Policy
from gradprobe.store import DEFAULT_ROOT, Run, load_run


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
) -> Iterator[Recording]:
    """Record gradient statistics of the training done inside the ``with`` block.

    ``model``: a ``torch.nn.Module``, a list of them, or a ``{label: module}``
    dict (labels prefix the layer names); ``None`` records every optimizer.
    ``every``: per-layer statistics every N optimizer steps (global norm every
    step). ``max_steps``: leave the block (cleanly) after N optimizer steps.
    ``clip``: a clip policy spec (e.g. ``"autoclip:p=10"``) applied right before
    every optimizer step, reusing the norms it records (no second pass).

    Example::

        with gradprobe.watch(model, out="runs") as rec:
            for x, y in data:
                opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
        run = gradprobe.load_run(rec.path)
    """
    from gradprobe.pytorch.naming import ParamNamer
    from gradprobe.pytorch.recorder import TorchRecorder

    session = Session(out=out, name=name, sampling=Sampling(every, flush_every, flush_seconds),
                      max_steps=max_steps, clip=clip)
    models = _models(model)
    session.recorders.append(TorchRecorder(session, ParamNamer(models) if models else None).install())
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
