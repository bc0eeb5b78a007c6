"""Running a tune: profile, derive candidates, try each, repeat the best, choose, write ``tune.json``.

Every trial runs the script for the same number of optimizer steps (the
script's own length when no step count is given) with the same seed; the two best candidates and no clipping are then repeated with
seeds ``seed+1 ... seed+repeats-1`` to measure run-to-run noise. Among the
candidates that are not significantly worse than the best
(:func:`~gradprobe.tuning.scoring.better_than`), the least intrusive one
(the smallest share of steps clipped; no clipping first) is chosen.
``--seed`` also varies the seeds a script sets itself
(:mod:`gradprobe.recording.reseeding`), so that the repeats differ; where they
still score exactly the same the verdict says so instead of claiming a
difference. With a budget, trials that would start after it has run out are
not run, and a running trial is stopped when it runs out.
"""

from __future__ import annotations

import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from gradprobe.errors import GradprobeError
from gradprobe.store.recommendation_file import write_recommendations
from gradprobe.store import Run, create_run_dir, load_run
from gradprobe.store.writer import write_json_atomic
from gradprobe.tuning.limits import MAX_REPEATS, MAX_TIMEOUT
from gradprobe.tuning.candidates import NO_CLIPPING, Candidate, derive_candidates
from gradprobe.tuning.measured import TUNE_FILE
from gradprobe.tuning.scoring import PENALTIES, Summary, better_than
from gradprobe.tuning.trials import Trial, TrialPlan, run_trial

REPEATED_BEST = 2  # candidates repeated besides no clipping


@dataclass
class TuneConfig:
    """What ``gradprobe tune`` was asked to do."""

    script: str
    args: Sequence[str] = ()
    steps: int | None = None
    source: Run | None = None
    candidates: Sequence[Candidate] | None = None
    seed: int = 0
    repeats: int = 3
    jobs: int = 1
    every: int = 10
    out: Path = Path("gradprobe-runs")
    name: str | None = None
    timeout: float | None = None
    metric: str | None = None
    maximize: bool = False
    budget: float | None = None


@dataclass
class TuneResult:
    """The trials, the candidates ranked, the choice and why."""

    path: Path
    trials: list[Trial] = field(default_factory=list)
    ranking: list[Summary] = field(default_factory=list)
    chosen: Summary | None = None
    verdict: str = ""
    p_values: dict[str, float] = field(default_factory=dict)
    skipped: int = 0  # trials not started because the budget ran out
    config: TuneConfig | None = None


class TuneObserver:
    """What a tune reports as it goes (to draw progress); every method does nothing here."""

    def planned(self, total: int) -> None:
        """``total`` trials are planned so far."""

    def started(self, name: str, candidate: Candidate, seed: int, run_path: Path, steps: int | None) -> None:
        """A trial of ``steps`` optimizer steps (None: not known) starts; its run will be written to
        ``run_path``."""

    def finished(self, trial: Trial) -> None:
        """A trial ended (successfully or not)."""


def tune(config: TuneConfig, observer: TuneObserver | None = None) -> TuneResult:
    """Run the whole tune described by ``config`` (see the module docstring)."""
    observer = observer or TuneObserver()
    if not 1 <= config.repeats <= MAX_REPEATS or config.jobs < 1:
        raise GradprobeError(f"--repeats must be between 1 and {MAX_REPEATS} and --jobs positive "
                             f"(got {config.repeats} and {config.jobs})")
    for option, seconds in (("--timeout", config.timeout), ("--budget", config.budget)):
        if seconds is not None and not 0 < seconds <= MAX_TIMEOUT:  # NaN included
            raise GradprobeError(f"{option} must be between 1 and {MAX_TIMEOUT:g} seconds (got {seconds})")
    stem = Path(config.script).stem
    result = TuneResult(create_run_dir(config.out, f"tune-{stem}", config.name), config=config)
    threads = max(1, (os.cpu_count() or 1) // config.jobs) if config.jobs > 1 else None
    plan = TrialPlan(config.script, tuple(config.args), config.steps, config.every, result.path, config.timeout, threads,
                     _metric_pattern(config.metric))
    runner = _Runner(plan, result, config, observer)

    candidates = list(config.candidates or [])
    source = config.source
    if not candidates:
        if source is None:
            observer.planned(1)
            profiled = runner.run([(Candidate(NO_CLIPPING, None), config.seed)])
            if not profiled:
                raise GradprobeError(f"--budget {config.budget:g} s ran out before the first trial")
            profile = profiled[0]
            if profile.score.steps == 0:
                raise GradprobeError(f"profiling {config.script} recorded no steps "
                                     f"({profile.score.error}); see {profile.log_path}")
            source = load_run(profile.run_path)
        candidates = derive_candidates(source)
    if config.steps is None and source is not None:
        runner.expected_steps = _recorded_steps(source)
    first_round = [(c, config.seed) for c in candidates if not runner.tried(c, config.seed)]
    observer.planned(len(first_round) + len(runner.trials))
    runner.run(first_round)

    summaries = _summaries(candidates, result.trials, config.maximize)
    repeated = sorted(summaries, key=Summary.rank_key)[:REPEATED_BEST]
    repeated += [s for s in summaries if s.spec is None and s not in repeated]
    repeats = [(Candidate(s.label, s.spec), config.seed + k) for k in range(1, config.repeats) for s in repeated]
    observer.planned(len(repeats) + len(result.trials))
    runner.run(repeats)

    summaries = _summaries(candidates, result.trials, config.maximize)
    most = max((len(s.scores) for s in summaries), default=0)
    contenders = sorted((s for s in summaries if len(s.scores) == most), key=Summary.rank_key)
    result.ranking = contenders + sorted((s for s in summaries if s not in contenders), key=Summary.rank_key)
    if contenders:
        _decide(result, contenders)
    if result.skipped:
        result.verdict = (result.verdict + "; " if result.verdict else "") + (
            f"the --budget of {config.budget:g} s ran out: {result.skipped} planned trials were not run")
    runner.save()
    return result


def _metric_pattern(metric: str | None) -> re.Pattern[str] | None:
    if metric is None:
        return None
    try:
        pattern = re.compile(metric)
    except re.error as exc:
        raise GradprobeError(f"--metric {metric!r} is not a regular expression: {exc}") from None
    if pattern.groups > 1:
        raise GradprobeError(f"--metric {metric!r}: use at most one group, around the number")
    return pattern


class _Runner:
    """Runs batches of trials (``jobs`` at a time) and keeps ``tune.json`` current after each."""

    def __init__(self, plan: TrialPlan, result: TuneResult, config: TuneConfig, observer: TuneObserver):
        self.plan, self.result, self.config = plan, result, config
        self.observer = observer
        self.trials = result.trials
        self.deadline = time.monotonic() + config.budget if config.budget is not None else None
        self.expected_steps = plan.steps  # what the progress counts to (None: not known yet)

    def tried(self, candidate: Candidate, seed: int) -> bool:
        return any(t.candidate.spec == candidate.spec and t.seed == seed for t in self.trials)

    def run(self, batch: list[tuple[Candidate, int]]) -> list[Trial]:
        names = [f"trial-{len(self.trials) + i:02d}-s{seed}" for i, (_, seed) in enumerate(batch)]
        done: list[Trial] = []
        with ThreadPoolExecutor(max_workers=self.config.jobs) as pool:
            futures = [pool.submit(self._run_one, c, seed, name) for (c, seed), name in zip(batch, names)]
            for future in as_completed(futures):
                trial = future.result()
                if trial is None:
                    self.result.skipped += 1
                    continue
                done.append(trial)
                self.trials.append(trial)
                self.save()
                self.observer.finished(trial)
        self.trials.sort(key=lambda t: t.name)
        return sorted(done, key=lambda t: t.name)

    def _run_one(self, candidate: Candidate, seed: int, name: str) -> Trial | None:
        """Run one trial, within what is left of the budget (None: nothing is left)."""
        timeout = self.plan.timeout
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                return None
            timeout = min(timeout, left) if timeout is not None else left
        self.observer.started(name, candidate, seed, self.plan.directory / name, self.expected_steps)
        return run_trial(self.plan, candidate, seed, name, timeout)

    def save(self) -> None:
        result, config = self.result, self.config
        document = {
            "script": config.script, "args": list(config.args),
            "from": str(config.source.path.resolve()) if config.source is not None else None,
            "steps": self.plan.steps, "seed": config.seed,
            "repeats": config.repeats, "metric": config.metric, "maximize": config.maximize,
            "budget": config.budget, "seconds": sum(t.seconds for t in result.trials),
            "skipped": result.skipped, "trials": [t.to_dict() for t in result.trials],
            "ranking": [_summary_dict(s) for s in result.ranking],
            "chosen": result.chosen.spec if result.chosen else None,
            "chosen_label": result.chosen.label if result.chosen else None,
            "verdict": result.verdict, "p_values": result.p_values,
        }
        write_json_atomic(result.path / TUNE_FILE, document)
        if result.chosen is not None and result.chosen.spec is not None:
            write_recommendations(result.path, result.path.name,
                                  [{"strategy": "tune", "spec": result.chosen.spec, "rationale": result.verdict}])


def _recorded_steps(run: Run) -> int:
    steps = run.steps
    return int((steps["optimizer"] == steps["optimizer"].min()).sum()) if not steps.empty else 0


def _summaries(candidates: Sequence[Candidate], trials: Sequence[Trial], maximize: bool) -> list[Summary]:
    summaries = []
    for candidate in candidates:
        scores = [t.score for t in trials if t.candidate.spec == candidate.spec]
        if scores:
            summaries.append(Summary(candidate.label, candidate.spec, scores, maximize))
    return summaries


def _summary_dict(s: Summary) -> dict:
    return {"candidate": s.label, "spec": s.spec, "status": s.status, "mean": s.mean, "std": s.std,
            "trials": len(s.scores), "identical_repeats": s.identical, "clip_fraction": s.clip_fraction}


def _decide(result: TuneResult, contenders: list[Summary]) -> None:
    """Among the candidates tried with every seed, choose the least intrusive one that is not
    significantly worse than the best of them."""
    best = contenders[0]
    if best.penalty >= PENALTIES["diverged"]:
        result.verdict = "every candidate diverged or failed; read the trial logs"
        return
    equivalent, worse, untested = [best], [], []
    for other in contenders[1:]:
        significant, p = better_than(best, other)
        if significant is None:  # no noise estimate: the best score wins
            untested.append(other)
            continue
        if not math.isnan(p):
            result.p_values[other.label] = p
        (worse if significant else equivalent).append(other)
    chosen = min(equivalent, key=lambda s: (s.clip_fraction, s.spec is not None))
    result.chosen = chosen
    name = "no clipping" if chosen.spec is None else chosen.spec
    if len(best.scores) < 2:
        result.verdict = f"{name} scored best; run-to-run noise was not measured (--repeats 1)"
    elif best.identical and untested:
        result.verdict = (f"{name} scored best, but its repeats with different seeds scored exactly the same: "
                          "the script's randomness does not depend on --seed (it seeds generators gradprobe "
                          "cannot reach, or has none), so run-to-run noise is unknown and no difference is "
                          "called significant")
    elif chosen.spec is None and best.spec is not None:
        result.verdict = (f"clipping makes no significant difference here: the best policy, {best.spec} "
                          f"(score {best.mean:.4g}), is within run-to-run noise of no clipping "
                          f"(p = {_p(result.p_values[chosen.label])})")
    elif chosen is not best:
        result.verdict = (f"{name} is within run-to-run noise of the best, {best.label} (p = "
                          f"{_p(result.p_values[chosen.label])}), and clips less ({chosen.clip_fraction:.0%} "
                          f"of steps)")
    else:
        reasons = [f"{s.label}: {s.status}" if s.penalty != best.penalty else f"{s.label}: p = "
                   f"{_p(result.p_values[s.label])}" for s in worse]
        close = [s.label for s in equivalent if s is not chosen]
        result.verdict = (f"{name} trains best" + (f", significantly ({'; '.join(reasons)})" if reasons else "")
                          + (f"; within run-to-run noise of it: {', '.join(close)}" if close else ""))


def _p(p: float) -> str:
    """A p-value as printed: never "0", which no finite sample shows."""
    return f"{p:.2g}" if p >= 1e-4 else "< 0.0001"
