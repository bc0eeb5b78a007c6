"""Keeping gradprobe's own failures out of the user's training."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

from gradprobe.errors import visible
from gradprobe.recording.session import Session, StopTraining


class GuardedHooks:
    """Base of the framework recorders: hooks wrapped by :meth:`_guard` never raise into training.

    The first internal error is reported once on stderr and in ``run.json``
    (``incomplete``); from then on every guarded hook does nothing, so
    recording (and clipping) stops and training goes on. Subclasses set
    ``session`` and ``policy``.
    """

    session: Session
    policy: Any
    disabled = False

    def _guard(self, fn: Callable) -> Callable:
        """Run ``fn`` so that its failures never reach the training loop."""

        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            if self.disabled:
                return None
            try:
                return fn(*args, **kwargs)
            except StopTraining:
                raise
            except Exception as exc:
                self._report(exc, getattr(fn, "__name__", "hook").strip("_"))
                return None

        return guarded

    def _report(self, exc: Exception, where: str) -> None:
        """Stop recording (and clipping) after an internal error; say so once, on stderr and in run.json."""
        if self.disabled:
            return
        self.disabled = True
        reason = f"internal error in {where} ({type(exc).__name__}: {exc})"
        stopped = "recording and clipping stopped" if self.policy is not None else "recording stopped"
        print(f"gradprobe: {visible(reason)}; {stopped}, training continues", file=sys.stderr)
        self.session.writer.mark_incomplete(reason)
