"""Child processes of a profiled script: only the process gradprobe started is recorded.

A child made by ``fork`` inherits gradprobe's hooks: they are switched off in it at once, so it
runs exactly as it would without gradprobe (not recorded, not clipped) and writes nothing to the
run. A child made by ``spawn`` or ``forkserver`` (``torch.multiprocessing.spawn``) is a fresh
interpreter without gradprobe. The first child process a script starts, other than DataLoader
workers (which load data and do not train), gets one line on stderr saying it is not profiled.
"""

from __future__ import annotations

import multiprocessing.process
import os
import sys
from typing import Any

_DATA_WORKERS = "torch.utils.data"
_sessions: list[Any] = []  # sessions whose recorders a forked child must switch off


def _switch_off_in_child() -> None:
    for session in _sessions:
        for recorder in session.recorders:
            recorder.disabled = True


os.register_at_fork(after_in_child=_switch_off_in_child)


class ChildProcesses:
    """While installed, forked children of this process record nothing, and the first child
    process the script starts is announced on stderr as not profiled."""

    def __init__(self, session: Any):
        self.session = session
        self.noticed = False
        self._original = multiprocessing.process.BaseProcess.start

    def install(self) -> "ChildProcesses":
        """Patch ``multiprocessing`` process start and register the session for forked children."""
        original, watcher = self._original, self

        def start(process: multiprocessing.process.BaseProcess) -> None:
            target = getattr(process, "_target", None)  # start() deletes it
            original(process)
            watcher._notice(process, target)

        multiprocessing.process.BaseProcess.start = start
        _sessions.append(self.session)
        return self

    def remove(self) -> None:
        """Undo :meth:`install`."""
        multiprocessing.process.BaseProcess.start = self._original
        if self.session in _sessions:
            _sessions.remove(self.session)

    def _notice(self, process: multiprocessing.process.BaseProcess, target: Any) -> None:
        if self.noticed or str(getattr(target, "__module__", "")).startswith(_DATA_WORKERS):
            return
        self.noticed = True
        print(f"gradprobe: the script started child process {process.pid}; only the main process is "
              "recorded, so training in child processes is not profiled", file=sys.stderr)
