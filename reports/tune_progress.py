"""Progress of a tune on stderr: trials done, and each running trial's steps as its run is flushed."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from gradprobe.reports.terminal import fmt
from gradprobe.store.writer import META_FILE
from gradprobe.tuning import Candidate, Trial, TuneObserver

POLL_SECONDS = 0.5


class TuneProgress(TuneObserver):
    """Draws the tune's progress: one bar for the trials, one per running trial (steps recorded so
    far, read from its ``run.json``; nothing is asked of the training itself), and a line per
    finished trial. Without a terminal only the lines are printed."""

    def __init__(self, console: Console | None = None):
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        self.progress = Progress(*columns, console=console or Console(stderr=True), transient=True)
        self.total = self.progress.add_task("trials", total=None)
        self.running: dict[str, tuple[TaskID, Path]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.poller = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> "TuneProgress":
        self.progress.start()
        self.poller.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.poller.join()
        self.progress.stop()

    def planned(self, total: int) -> None:
        self.progress.update(self.total, total=total)

    def started(self, name: str, candidate: Candidate, seed: int, run_path: Path, steps: int | None) -> None:
        with self.lock:
            task = self.progress.add_task(f"  {name} {candidate.label} (seed {seed})", total=steps)
            self.running[name] = (task, run_path)

    def finished(self, trial: Trial) -> None:
        with self.lock:
            task, _ = self.running.pop(trial.name, (None, None))
            if task is not None:
                self.progress.remove_task(task)
        self.progress.advance(self.total)
        score = trial.score
        self.progress.console.print(
            f"gradprobe: {trial.name} {trial.candidate.label} (seed {trial.seed}): {score.status}, "
            f"score {fmt(score.score)}" + (f" ({score.error})" if score.error else ""), highlight=False)

    def _poll(self) -> None:
        while not self.stop.wait(POLL_SECONDS):
            with self.lock:
                running = list(self.running.values())
            for task, run_path in running:
                steps = _recorded_steps(run_path)
                if steps is not None:
                    self.progress.update(task, completed=steps)


def _recorded_steps(run_path: Path) -> int | None:
    """Steps written so far according to ``run.json`` (None while it does not exist yet)."""
    try:
        return int(json.loads((run_path / META_FILE).read_text(encoding="utf-8"))["progress"]["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
