"""``gradprobe tune``: choose a clip policy by short trials of the script."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from gradprobe.cli.launch import ARGS, EVERY, MAX_PROCESSES, OUT, SCRIPT, script_args
from gradprobe.errors import GradprobeError
from gradprobe.tuning.limits import MAX_REPEATS, MAX_TIMEOUT


def tune(
    script: str = SCRIPT,
    args: Optional[List[str]] = ARGS,
    steps: Optional[int] = typer.Option(None, "--steps", "-n", min=1, help="End each trial after N optimizer "
                                        "steps (default: the whole script with --from or --metric, so that "
                                        "it reaches its own evaluation; else 200)."),
    from_run: Optional[str] = typer.Option(None, "--from", help="Derive candidates from this recorded run "
                                           "instead of profiling first."),
    candidates: List[str] = typer.Option([], "--candidates", help="Clip specs to try instead of the derived "
                                         "ones, comma-separated ('none' for no clipping; repeatable)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first round; repeats use seed+1, seed+2, ..."),
    repeats: int = typer.Option(3, "--repeats", min=1, max=MAX_REPEATS, help="Trials per candidate for the best two and no "
                                "clipping, to measure run-to-run noise."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, max=MAX_PROCESSES, help="Trials run in parallel (each gets an equal share "
                             "of the CPU threads)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=1, max=MAX_TIMEOUT, help="Seconds after which a trial is "
                                            "stopped and counted as failed."),
    budget: Optional[float] = typer.Option(None, "--budget", min=1, max=MAX_TIMEOUT, help="Seconds the whole tune may take: "
                                           "no trial starts after that, and a running one is stopped."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Score each trial by the last number this "
                                         "regular expression matches in the script's output (its one group, "
                                         "else the whole match), e.g. 'val_loss=([0-9.e+-]+)', instead of the "
                                         "training loss."),
    maximize: bool = typer.Option(False, "--maximize", help="With --metric: higher is better (e.g. accuracy)."),
    out: Path = OUT, name: Optional[str] = typer.Option(None, "--name", help="Tune directory name."),
    every: int = EVERY,
) -> None:
    """Try clip policies in short, seeded trials of SCRIPT and choose the one that trains best.

    Options come before SCRIPT; everything after SCRIPT goes to the script:

    [bold]gradprobe tune --steps 300 train.py -- --epochs 1[/bold]
    [bold]gradprobe tune --candidates 'none,global-norm:max=1,zclip:z=2.5' train.py[/bold]
    [bold]gradprobe tune --metric 'val_acc=([0-9.]+)' --maximize --budget 1800 train.py[/bold]

    Profiles SCRIPT, derives candidates (no clipping, global-norm at the 50th,
    90th, 95th and 99th percentile of the norms and at 1 and 0.25 where they
    would clip, AutoClip, ZClip), runs each for the same number of steps with
    the same seed, scores it by its smoothed final loss or --metric (penalising
    exploding, non-finite and failed trials), repeats the best two and no
    clipping with other seeds (which also vary the seeds the script sets
    itself), and picks the least intrusive policy within run-to-run noise of
    the best. Writes tune.json and, when a clip policy wins,
    recommendation.json for run --clip-from / apply --from.
    """
    from gradprobe.launcher import check_script
    from gradprobe.recording.seeding import check_seed
    from gradprobe.reports.tune_progress import TuneProgress
    from gradprobe.reports.tune_table import render_tune
    from gradprobe.store import resolve_run
    from gradprobe.tuning.tune import TuneConfig
    from gradprobe.tuning.tune import tune as run_tune
    from gradprobe.tuning.candidates import parse_candidates

    if maximize and metric is None:
        raise GradprobeError("--maximize needs --metric (the training loss is always minimised)")
    check_script(script)
    check_seed(seed)
    check_seed(seed + repeats - 1)  # the repeats' seeds
    source = resolve_run(from_run) if from_run else None
    config = TuneConfig(script, script_args(args), steps or (None if source or metric else 200), source,
                        parse_candidates(candidates) if candidates else None, seed, repeats, jobs, every, out, name,
                        timeout, metric, maximize, budget)
    with TuneProgress() as progress:
        result = run_tune(config, progress)
    render_tune(result)
