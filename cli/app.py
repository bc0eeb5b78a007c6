"""Typer application: ``gradprobe profile | report | ls``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from gradprobe._version import __version__
from gradprobe.errors import GradprobeError
from gradprobe.store import DEFAULT_ROOT

app = typer.Typer(
    name="gradprobe",
    help="Gradient diagnostics and clipping for PyTorch and TensorFlow/Keras training.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

SCRIPT_CONTEXT = {"allow_interspersed_args": False}


def _version(value: bool) -> None:
    if value:
        print(f"gradprobe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Gradient diagnostics and clipping for PyTorch and TensorFlow/Keras training."""


def script_args(args: Optional[List[str]]) -> list[str]:
    """The script's own arguments: everything after SCRIPT, less a leading ``--``."""
    args = list(args or [])
    return args[1:] if args[:1] == ["--"] else args


@app.command(context_settings=SCRIPT_CONTEXT)
def profile(
    script: str = typer.Argument(..., help="The training script to run, unmodified."),
    args: Optional[List[str]] = typer.Argument(None, help="Arguments for the script (after SCRIPT or --)."),
    out: Path = typer.Option(Path(DEFAULT_ROOT), "--out", "-o", help="Root directory of runs."),
    name: Optional[str] = typer.Option(None, "--name", help="Run directory name (default: time-script)."),
    every: int = typer.Option(10, "--every", min=1, help="Record per-layer norms every N steps "
                              "(the global norm is recorded at every step)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1,
                                            help="End the script cleanly after N optimizer steps."),
    flush_every: int = typer.Option(100, "--flush-every", min=1,
                                    help="Copy device buffers to disk every N steps."),
) -> None:
    """Run SCRIPT unmodified and record its gradients into a run directory.

    [bold]gradprobe profile train.py -- --epochs 1[/bold]

    The script keeps its argv, working directory, sys.path, stdout and exit code;
    gradprobe prints only to stderr.
    """
    from gradprobe.launcher import check_script, reraise_signal, run_script
    from gradprobe.session import Sampling, Session

    check_script(script)
    args_list = script_args(args)
    session = Session(out=out, name=name, script=script, argv=[script, *args_list],
                      sampling=Sampling(every=every, flush_every=flush_every), max_steps=max_steps)
    outcome = run_script(session, script, args_list)
    print(f"gradprobe: run {outcome.status} -> {session.path}", file=sys.stderr)
    reraise_signal(outcome)
    raise typer.Exit(outcome.exit_code)


@app.command()
def report(
    run: Optional[str] = typer.Argument(None, help="Run directory or name (default: the latest run)."),
    root: Path = typer.Option(Path(DEFAULT_ROOT), "--root", help="Where to look for run names."),
) -> None:
    """Summarise a recorded run: status, global norm, per-layer norms."""
    from gradprobe.reports.terminal import render_summary
    from gradprobe.store import resolve_run

    render_summary(resolve_run(run, root))


@app.command("ls")
def list_command(
    root: Path = typer.Argument(Path(DEFAULT_ROOT), help="Root directory of runs."),
) -> None:
    """List the runs under ROOT with status, steps, script and start time."""
    from gradprobe.reports.terminal import render_run_list
    from gradprobe.store import list_runs

    if not root.is_dir():
        raise GradprobeError(f"{root}: no such directory")
    render_run_list(list_runs(root))


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit status 2."""
    try:
        app(prog_name="gradprobe")
    except GradprobeError as exc:
        print(f"gradprobe: error: {exc}", file=sys.stderr)
        sys.exit(2)
