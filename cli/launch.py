"""``gradprobe profile`` and ``gradprobe run``: run a training script under a recording session."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import List, Optional

import typer

from gradprobe.errors import GradprobeError, visible
from gradprobe.recording.session import (
    DEFAULT_EVERY,
    DEFAULT_FLUSH_EVERY,
    MAX_EVERY,
    MAX_FLUSH_EVERY,
)
from gradprobe.store import DEFAULT_ROOT

SCRIPT_CONTEXT = {"allow_interspersed_args": False}

SCRIPT = typer.Argument(..., help="The training script to run, unmodified.")
ARGS = typer.Argument(None, help="Arguments for the script (after SCRIPT or --).")
OUT = typer.Option(Path(DEFAULT_ROOT), "--out", "-o", help="Root directory of runs.")
NAME = typer.Option(None, "--name", help="Run directory name (default: time-script).")
# Processes one command may start: one per core, or per GPU on a node with more GPUs than cores.
MAX_PROCESSES = max(16, os.cpu_count() or 1)
EVERY = typer.Option(DEFAULT_EVERY, "--every", min=1, max=MAX_EVERY,
                     help="Record per-layer norms every N steps (the global norm is recorded at every step).")
MAX_STEPS = typer.Option(None, "--max-steps", min=1, help="End the script cleanly after N optimizer steps.")
SEED = typer.Option(None, "--seed", help="Seed Python, NumPy, PyTorch and TensorFlow before the script "
                    "runs; seeds the script sets itself are mixed with it.")
QUIET = typer.Option(False, "--quiet", "-q", help="No live view on stderr (it is shown only when stderr is a "
                     "terminal).")
FLUSH_EVERY = typer.Option(DEFAULT_FLUSH_EVERY, "--flush-every", min=1, max=MAX_FLUSH_EVERY,
                           help="Copy device buffers to disk every N steps (and after steps 1, 2, 4 ... below N).")
NPROC = typer.Option(None, "--nproc-per-node", min=1, max=MAX_PROCESSES, help="Start N processes with torch's launcher (torchrun), "
                     "each running SCRIPT under gradprobe; the run directory is shared.")
VERBOSE = typer.Option(False, "--verbose", help="Keep TensorFlow's and absl's own log lines (hidden by "
                       "default, unless set in the environment, e.g. TF_CPP_MIN_LOG_LEVEL).")
SIGNALS = typer.Option(True, "--signals/--no-signals", help="On the sampled steps, also measure the applied "
                       "updates and micro-batch gradient norms (update-to-weight ratios, noise scale; PyTorch). "
                       "--no-signals: the cheapest recording.")
ALL_RANKS = typer.Option(False, "--all-ranks", help="In a distributed run, record every rank (default: rank 0 "
                         "only), so that ranks whose gradients disagree are reported.")


def script_args(args: Optional[List[str]]) -> list[str]:
    """The script's own arguments: everything after SCRIPT, less a leading ``--``."""
    args = list(args or [])
    return args[1:] if args[:1] == ["--"] else args


def launch_ranks(nproc: int, script: str, args: list[str], options: list[str]) -> int:
    """Run ``torch.distributed.run`` with ``nproc`` local processes, each under ``gradprobe`` with
    ``options``; return its exit code."""
    if "WORLD_SIZE" in os.environ:
        raise GradprobeError("--nproc-per-node: this process is already one rank of a distributed launch")
    if importlib.util.find_spec("torch") is None:
        raise GradprobeError("--nproc-per-node needs PyTorch (it starts torch.distributed.run)")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "gradprobe", *options, script, "--", *args]
    process = subprocess.Popen(command)
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:  # the terminal interrupted torchrun too: let it stop its ranks
            continue


def launch(script: str, args: Optional[List[str]], out: Path, name: Optional[str], every: int,
           max_steps: Optional[int], flush_every: int, seed: Optional[int], clip: Optional[str] = None,
           quiet: bool = False, nproc: Optional[int] = None, all_ranks: bool = False,
           verbose: bool = False, skip_samples: Optional[Path] = None, signals: bool = True) -> None:
    """Check everything, run the script under a session (or under N ranks), and exit as the script did."""
    from gradprobe.launcher import Outcome, check_script, reraise_signal, run_script
    from gradprobe.reports.live import live_view
    from gradprobe.recording.framework_logs import quiet_framework_logs
    from gradprobe.recording.seeding import check_seed
    from gradprobe.recording.session import Sampling, Session

    from gradprobe.store.skip_samples_file import read_skip_samples

    check_seed(seed)
    check_script(script)
    skips = read_skip_samples(skip_samples) if skip_samples is not None else None
    args_list = script_args(args)
    if nproc is not None:
        options = ["profile" if clip is None and skips is None else "run", "--out", str(out), "--every", str(every),
                   "--flush-every", str(flush_every)]
        for flag, value in (("--name", name), ("--max-steps", max_steps), ("--seed", seed), ("--clip", clip),
                            ("--skip-samples", skip_samples)):
            if value is not None:
                options += [flag, str(value)]
        options += ["--quiet"] * quiet + ["--all-ranks"] * all_ranks + ["--verbose"] * verbose
        options += ["--no-signals"] * (not signals)
        raise typer.Exit(launch_ranks(nproc, script, args_list, options))
    if not verbose:
        quiet_framework_logs()
    session = Session(out=out, name=name, script=script, argv=[script, *args_list], max_steps=max_steps,
                      sampling=Sampling(every=every, flush_every=flush_every, signals=signals), clip=clip, seed=seed,
                      all_ranks=all_ranks, skip_samples=skips)
    with ExitStack() as view:
        view.enter_context(live_view(session, quiet or not session.recording))

        def ended(outcome: Outcome) -> None:
            view.close()
            if session.path is not None:
                print(f"gradprobe: run {outcome.status} -> {visible(session.shown_path)}", file=sys.stderr)

        outcome = run_script(session, script, args_list, seed, on_end=ended)
    reraise_signal(outcome.signal)
    raise typer.Exit(outcome.exit_code)


def profile(script: str = SCRIPT, args: Optional[List[str]] = ARGS, out: Path = OUT, name: Optional[str] = NAME,
            every: int = EVERY, max_steps: Optional[int] = MAX_STEPS, flush_every: int = FLUSH_EVERY,
            seed: Optional[int] = SEED, quiet: bool = QUIET, nproc_per_node: Optional[int] = NPROC,
            all_ranks: bool = ALL_RANKS, verbose: bool = VERBOSE, signals: bool = SIGNALS) -> None:
    """Run SCRIPT unmodified and record its gradients into a run directory.

    [bold]gradprobe profile train.py -- --epochs 1[/bold]
    [bold]gradprobe profile --nproc-per-node 2 train_ddp.py[/bold] (or [bold]torchrun --nproc-per-node 2 -m
    gradprobe profile train_ddp.py[/bold])

    The script keeps its argv, working directory, sys.path, stdout and exit code;
    gradprobe prints only to stderr.
    """
    launch(script, args, out, name, every, max_steps, flush_every, seed, quiet=quiet, nproc=nproc_per_node,
           all_ranks=all_ranks, verbose=verbose, signals=signals)


def run(
    script: str = SCRIPT,
    args: Optional[List[str]] = ARGS,
    clip: Optional[str] = typer.Option(None, "--clip", "-c", help="Clip policy spec, e.g. "
                                       "'global-norm:max=1.0' or 'zclip:z=2.5+skip:sigma=6'."),
    clip_from: Optional[Path] = typer.Option(None, "--clip-from", help="Use the first recommendation of "
                                             "a recommendation.json (or of a run directory holding one)."),
    out: Path = OUT, name: Optional[str] = NAME, every: int = EVERY, max_steps: Optional[int] = MAX_STEPS,
    flush_every: int = FLUSH_EVERY, seed: Optional[int] = SEED, quiet: bool = QUIET,
    nproc_per_node: Optional[int] = NPROC, all_ranks: bool = ALL_RANKS, verbose: bool = VERBOSE,
    skip_samples: Optional[Path] = typer.Option(None, "--skip-samples", help="Leave out these DataLoader "
                                                "samples (a JSON file, e.g. RUN/skip-samples.json that "
                                                "gradprobe report writes); with or without a clip policy."),
    signals: bool = SIGNALS,
) -> None:
    """Run SCRIPT unmodified with a clip policy applied before every optimizer step, and record it.

    [bold]gradprobe run --clip global-norm:max=1.0 train.py -- --epochs 1[/bold]
    [bold]gradprobe run --clip-from gradprobe-runs/RUN/recommendation.json train.py[/bold]

    Gradients are clipped after accumulation and AMP unscaling, right before the
    update; the run records the pre- and post-clip global norm, scale and
    threshold of every step. With [bold]--skip-samples FILE[/bold] the named
    DataLoaders' samplers leave those dataset indices out, to test whether
    the batches a spike finding names caused it.
    """
    from gradprobe.launcher import check_script
    from gradprobe.policies import parse_spec
    from gradprobe.store.recommendation_file import load_recommended_spec

    if clip is not None and clip_from is not None:
        raise GradprobeError("give one of --clip SPEC or --clip-from FILE, not both")
    if clip is None and clip_from is None and skip_samples is None:
        raise GradprobeError("give --clip SPEC, --clip-from FILE or --skip-samples FILE")
    spec = clip if clip is not None else load_recommended_spec(clip_from) if clip_from is not None else None
    policy = parse_spec(spec) if spec is not None else None
    check_script(script)  # a missing script is the one error, without a line about clipping before it
    if policy is not None and nproc_per_node is None and os.environ.get("RANK", "0") == "0":  # once, by rank 0
        source = "" if clip_from is None else f" (from {visible(clip_from)})"
        print(f"gradprobe: clipping with {policy}{source}", file=sys.stderr)
    launch(script, args, out, name, every, max_steps, flush_every, seed, clip=policy, quiet=quiet,
           nproc=nproc_per_node, all_ranks=all_ranks, verbose=verbose, skip_samples=skip_samples, signals=signals)
