"""One tune trial: the script run under ``gradprobe profile`` or ``gradprobe run --clip`` in a
child process, for a fixed number of optimizer steps, with a fixed seed."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradprobe.errors import RunFormatError
from gradprobe.store import load_run
from gradprobe.store.writer import META_FILE
from gradprobe.tuning.candidates import Candidate
from gradprobe.tuning.scoring import TrialScore, metric_value, score_run

# Trials flush this often, so that progress read from their run directories advances smoothly.
TRIAL_FLUSH_EVERY = 20

# Thread-count variables of the numeric libraries, capped when trials run in parallel.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")


@dataclass(frozen=True)
class TrialPlan:
    """What every trial of a tune shares."""

    script: str
    args: tuple[str, ...]
    steps: int | None  # None: the script runs to its own end
    every: int
    directory: Path
    timeout: float | None = None
    threads: int | None = None
    metric: re.Pattern[str] | None = None

    def command(self, candidate: Candidate, seed: int, name: str) -> list[str]:
        """The ``gradprobe`` command line of one trial."""
        mode = ["profile"] if candidate.spec is None else ["run", "--clip", candidate.spec]
        cut = ["--max-steps", str(self.steps)] if self.steps is not None else []
        return [sys.executable, "-m", "gradprobe", *mode, "--out", str(self.directory), "--name", name,
                *cut, "--every", str(self.every), "--seed", str(seed),
                "--flush-every", str(TRIAL_FLUSH_EVERY),
                self.script, "--", *self.args]

    def environment(self, seed: int) -> dict[str, str]:
        """The trial's environment: hash seed fixed, thread counts capped when trials share the CPU."""
        env = {**os.environ, "PYTHONHASHSEED": str(seed)}
        if self.threads is not None:
            env.update({name: str(self.threads) for name in THREAD_VARIABLES if name not in os.environ})
        return env


@dataclass
class Trial:
    """A finished trial: which policy, which seed, where its run and log are, and its score."""

    candidate: Candidate
    seed: int
    name: str
    run_path: Path
    log_path: Path
    exit_code: int | None
    score: TrialScore
    seconds: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """The trial as ``tune.json`` lists it (run and log paths relative to the tune directory)."""
        return {
            "candidate": self.candidate.label, "spec": self.candidate.spec, "seed": self.seed,
            "status": self.score.status, "score": self.score.score, "steps": self.score.steps,
            "clip_fraction": self.score.clip_fraction, "exit_code": self.exit_code, "error": self.score.error,
            "seconds": self.seconds, "run": self.run_path.name, "log": self.log_path.name,
        }


def run_trial(plan: TrialPlan, candidate: Candidate, seed: int, name: str, timeout: float | None = None) -> Trial:
    """Run one trial to its end (or its timeout: ``timeout``, else the plan's) and score its run; never
    raises for the trial's own failure."""
    run_path, log_path = plan.directory / name, plan.directory / f"{name}.log"
    timeout = timeout if timeout is not None else plan.timeout
    exit_code: int | None = None
    error = None
    started = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            exit_code = subprocess.run(plan.command(candidate, seed, name), stdout=log, stderr=subprocess.STDOUT,
                                       env=plan.environment(seed), timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout:g} s"
    seconds = time.monotonic() - started
    if error is None and (run_path / META_FILE).is_file():
        score = _score(plan, run_path, log_path)
    else:
        score = TrialScore("failed", error=error or _last_line(log_path))
    return Trial(candidate, seed, name, run_path, log_path, exit_code, score, seconds)


def _score(plan: TrialPlan, run_path: Path, log_path: Path) -> TrialScore:
    metric = None
    if plan.metric is not None:
        metric = metric_value(log_path.read_text(encoding="utf-8", errors="replace"), plan.metric)
        if metric is None:
            return TrialScore("failed", error=f"--metric {plan.metric.pattern!r} matched no number in the "
                              "trial's output")
    try:
        return score_run(load_run(run_path), metric)
    except RunFormatError as exc:
        return TrialScore("failed", error=str(exc))


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "the trial printed nothing"
