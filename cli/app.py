"""Typer application: the ``gradprobe`` commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from gradprobe._version import __version__
from gradprobe.cli.launch import SCRIPT_CONTEXT, profile, run
from gradprobe.errors import GradprobeError
from gradprobe.store import DEFAULT_ROOT

app = typer.Typer(
    name="gradprobe",
    help="Gradient diagnostics and clipping for PyTorch and TensorFlow/Keras training.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

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


app.command(context_settings=SCRIPT_CONTEXT)(profile)
app.command(context_settings=SCRIPT_CONTEXT)(run)


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
