"""Live view of a recording on stderr: steps, steps/s, global norm, clip activity and the latest finding.

The view is refreshed at every flush, from the host arrays the flush writes
(it never reads gradients and adds no device synchronisation of its own). While
it is shown the session flushes at least every ``LIVE_FLUSH_SECONDS`` (one
device read and one small redraw each time), and the early flushes after steps
1, 2, 4, 8 ... make it appear from the first step. Only at the first flush
are rich, numpy and the live checks imported (:mod:`gradprobe.reports.live_display`),
so the script starts as it would without gradprobe.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Mapping

from gradprobe.recording.session import LIVE_FLUSH_SECONDS

if TYPE_CHECKING:
    from rich.console import Console, Group

    from gradprobe.recording.session import Session
    from gradprobe.reports.live_display import LiveDisplay


def live_view(session: Session, quiet: bool = False) -> LiveView | nullcontext:
    """A :class:`LiveView` of ``session`` when stderr is a terminal, on the first rank, unless ``quiet``;
    otherwise a context that does nothing."""
    if quiet or session.layout["rank"] != 0 or not sys.stderr.isatty():
        return nullcontext()
    return LiveView(session)


class LiveView:
    """A live display of ``session``, fed by its flushes. Use as a context manager around training;
    the display is shown from the first flush on."""

    def __init__(self, session: Session, console: Console | None = None):
        self.session = session
        self.console = console
        self.display: LiveDisplay | None = None
        self._entered = False

    def __enter__(self) -> LiveView:
        self._entered = True
        self._flush_seconds = self.session.flush_seconds
        self.session.flush_seconds = min(self._flush_seconds, LIVE_FLUSH_SECONDS)
        self.session.listeners.append(self.update)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.update in self.session.listeners:
            self.session.listeners.remove(self.update)
            self.session.flush_seconds = self._flush_seconds
        self._entered = False
        if self.display is not None:
            self.display.stop()

    def update(self, steps: Mapping[str, Any], layers: Mapping[str, Any]) -> None:
        """Take in one flush and redraw; on an error of its own the view closes and training goes on."""
        try:
            if self.display is None:
                from gradprobe.reports.live_display import LiveDisplay

                self.display = LiveDisplay(self.session, self.console)
                if self._entered:
                    self.display.start()
            self.display.show(steps)
        except Exception as exc:
            self.__exit__()
            print(f"gradprobe: live view stopped ({type(exc).__name__}: {exc})", file=sys.stderr)

    def render(self) -> Group:
        """What the view shows now (after at least one flush)."""
        return self.display.render()
