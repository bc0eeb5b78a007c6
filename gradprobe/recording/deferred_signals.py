"""Signals that arrive while gradprobe updates its buffers are delivered once it is done.

Ctrl-C or SIGTERM can land at any bytecode of the script, including the few
inside gradprobe's bookkeeping; raised there, they would leave a buffer half
updated and its steps unwritable. The launcher routes both signals through
:func:`deferring`, and the code that updates or flushes buffers runs inside
:data:`critical`; a signal that arrives meanwhile is handled when the
outermost critical section ends, from the same frame, so the script still
sees its ``KeyboardInterrupt`` where it would have.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Callable

Handler = Callable[[int, FrameType | None], object]


class _CriticalSection:
    """Re-entrant section during which signal handlers installed by :func:`deferring` wait.

    Python runs signal handlers in the main thread only, so only the main
    thread's sections count; in other threads (a framework's callback thread)
    the section does nothing.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.pending: list[tuple[Handler, int, FrameType | None]] = []

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.depth += 1

    def __exit__(self, *exc_info: object) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self.depth -= 1
        if self.depth == 0 and self.pending:
            handler, signum, frame = self.pending.pop(0)
            self.pending.clear()
            handler(signum, frame)


critical = _CriticalSection()


def deferring(handler: Handler) -> Handler:
    """``handler`` wrapped to wait for the end of any :data:`critical` section in progress."""

    def deferred(signum: int, frame: FrameType | None) -> object:
        if critical.depth:
            critical.pending.append((handler, signum, frame))
            return None
        return handler(signum, frame)

    return deferred


def install(signum: int, handler: Handler) -> object:
    """Install ``handler`` for ``signum`` behind :func:`deferring`; returns the previous handler."""
    return signal.signal(signum, deferring(handler))
