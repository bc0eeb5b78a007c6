"""What the live view shows (:mod:`gradprobe.reports.live`): steps, steps/s, global norm, clip activity
and the latest finding, drawn with rich from each flush's host arrays.

While it is shown, the script's lines on a terminal are printed above it; a
line a progress bar redraws in place (``\\r``) is printed once, in its final
state, when it ends.
"""

from __future__ import annotations

import io
import sys
from collections import deque
from collections.abc import Mapping
from typing import IO, Any

import numpy as np
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gradprobe.analysis import Finding
from gradprobe.analysis.clip_saturation import CLIPPED_SCALE
from gradprobe.analysis.live_checks import LiveChecks
from gradprobe.reports.escape import terminal as escape
from gradprobe.reports.sparkline import sparkline
from gradprobe.reports.terminal import SEVERITY_STYLE, fmt
from gradprobe.recording.session import Session

RECENT = 1000
SPARK_WIDTH = 30


class _Optimizer:
    """What the view keeps of one optimizer's flushed steps."""

    def __init__(self) -> None:
        self.steps = 0
        self.last_step = -1
        self.last_time: float | None = None
        self.rate = float("nan")
        self.norms: deque[float] = deque(maxlen=RECENT)
        self.clipped = 0
        self.clip_steps = 0
        self.scale = float("nan")

    def add(self, step: np.ndarray, time: np.ndarray, norm: np.ndarray, scale: np.ndarray,
            threshold: np.ndarray) -> None:
        start = self.last_time if self.last_time is not None else time[0]
        counted = len(step) if self.last_time is not None else len(step) - 1
        if time[-1] > start and counted > 0:
            self.rate = counted / (time[-1] - start)
        self.steps += len(step)
        self.last_step, self.last_time = int(step[-1]), float(time[-1])
        self.norms.extend(norm.tolist())
        active = np.isfinite(threshold)
        self.clip_steps += int(active.sum())
        self.clipped += int((active & (scale < CLIPPED_SCALE)).sum())
        self.scale = float(scale[-1])


class _LinesAbove(io.TextIOBase):
    """Stands in for ``sys.stdout``/``sys.stderr`` while the view is shown: each complete line is printed
    above the view; text a line redraws in place (after ``\\r``) keeps only its last state."""

    def __init__(self, console: Console, file: IO[str]):
        self._console = console
        self.file = file
        self._pending = ""

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            self._console.print(Text.from_ansi(line.rsplit("\r", 1)[-1]), soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        """Partial lines wait for their newline (or for :meth:`release`)."""

    def release(self) -> IO[str]:
        """Hand a pending partial line to the original file and return that file."""
        if self._pending:
            self.file.write(self._pending)
            self.file.flush()
        return self.file

    def isatty(self) -> bool:
        return self.file.isatty()

    def fileno(self) -> int:
        return self.file.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


class LiveDisplay:
    """The rich live display of ``session``: :meth:`start` shows it, :meth:`show` redraws it with one
    more flush, :meth:`stop` takes it down."""

    def __init__(self, session: Session, console: Console | None = None):
        self.session = session
        self.console = console or Console(file=sys.stderr)
        self.checks = LiveChecks()
        self.optimizers: dict[int, _Optimizer] = {}
        self.latest: Finding | None = None
        self.live = Live(console=self.console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False)
        self._proxies: dict[str, _LinesAbove] = {}

    def start(self) -> None:
        """Show the display; the script's lines on a terminal go above it from now on."""
        self.live.start()
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream.isatty():
                self._proxies[name] = _LinesAbove(self.console, stream)
                setattr(sys, name, self._proxies[name])

    def stop(self) -> None:
        """Take the display down and give the script its own stdout and stderr back."""
        for name, proxy in self._proxies.items():
            if getattr(sys, name) is proxy:
                setattr(sys, name, proxy.release())
        self._proxies.clear()
        self.live.stop()

    def show(self, steps: Mapping[str, np.ndarray]) -> None:
        """Take in one flush's ``steps`` table and redraw."""
        self._take(steps)
        self.live.update(self.render(), refresh=True)

    def _take(self, steps: Mapping[str, np.ndarray]) -> None:
        optimizer = np.asarray(steps["optimizer"])
        for index in np.unique(optimizer):
            mine = optimizer == index
            self.optimizers.setdefault(int(index), _Optimizer()).add(
                *(np.asarray(steps[c])[mine] for c in ("step", "time", "global_norm", "clip_scale",
                                                         "clip_threshold")))
        found = self.checks.feed(steps)
        if found:
            self.latest = max(found, key=lambda f: f.rank)

    def _label(self, index: int) -> str:
        known = {o.get("index"): o.get("class") for o in self.session.optimizers}
        return f"opt {index}" + (f" {known[index]}" if known.get(index) else "")

    def render(self) -> Group:
        """The view: one line per optimizer, then the latest finding."""
        table = Table.grid(padding=(0, 2))
        for index, state in sorted(self.optimizers.items()):
            norms = np.asarray(state.norms, dtype=np.float64)
            finite = norms[np.isfinite(norms)]
            current = f"norm {fmt(norms[-1])}" if np.isfinite(norms[-1]) else "norm [bold red]NaN/Inf[/]"
            median = f"median {fmt(float(np.median(finite)) if finite.size else None)}"
            clip = "no clipping"
            if state.clip_steps:
                clip = f"clipped {state.clipped / state.clip_steps:.0%} of steps, last scale {fmt(state.scale)}"
            table.add_row(escape(self._label(index)), f"step {state.last_step}", f"{state.rate:.1f} steps/s",
                          current, median, Text(sparkline(norms, SPARK_WIDTH), style="cyan"), clip)
        title = Text.assemble(("gradprobe ", "bold"), f"recording {self.session.shown_path}")
        parts: list[Any] = [title, table]
        if self.latest is not None:
            f = self.latest
            parts.append(Text.from_markup(f"latest finding: [{SEVERITY_STYLE[f.severity]}]{f.severity}[/] "
                                          f"{f.kind} ({escape(self._label(f.evidence['optimizer']))}): "
                                          f"{escape(f.advice)}"))
        return Group(*parts)
