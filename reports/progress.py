"""Progress on stderr for the long parts of building a report (shown only on a terminal)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


class Stages:
    """A fixed number of named stages; ``with stages.stage("reading run"): ...`` runs one."""

    def __init__(self, progress: Progress | None, total: int):
        self._progress = progress
        self._task = progress.add_task("", total=total) if progress else None

    @contextmanager
    def stage(self, description: str) -> Iterator[None]:
        """Show ``description`` while the block runs, then count the stage as done."""
        if self._progress is not None:
            self._progress.update(self._task, description=description)
        yield
        if self._progress is not None:
            self._progress.advance(self._task)


@contextmanager
def stages(total: int, console: Console | None = None) -> Iterator[Stages]:
    """A transient progress bar on stderr (nothing when stderr is not a terminal)."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield Stages(None, total)
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        yield Stages(progress, total)


def quiet_stages(total: int = 0) -> Stages:
    """Stages that show nothing (for library use)."""
    return Stages(None, total)
