"""Typer application: the ``gradprobe`` commands."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from gradprobe._version import __version__
from gradprobe.cli.apply_command import apply
from gradprobe.cli.export_command import export
from gradprobe.cli.help_format import Command, Group
from gradprobe.cli.launch import SCRIPT_CONTEXT, profile, run
from gradprobe.cli.tune_command import tune
from gradprobe.errors import GradprobeError, one_line, visible
from gradprobe.store import DEFAULT_ROOT

# Commands whose module is imported only when they run or help lists them, with the command listed before
# each: what they import at module level (the policy registry, numpy) must not slow down `gradprobe profile`
# or be loaded before the profiled script starts.
LAZY_COMMANDS = {"recommend": ("gradprobe.cli.recommend_command", "report")}
MARKUP = "rich"


class Commands(Group):
    """The root command group: the commands registered on :data:`app`, and :data:`LAZY_COMMANDS`
    built on first use."""

    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        for name, (_, after) in LAZY_COMMANDS.items():
            if name not in names:
                names.insert(names.index(after) + 1, name)
        return names

    def get_command(self, ctx, cmd_name: str):
        if cmd_name not in self.commands:  # an unknown name builds them all, for the "did you mean" hint
            for name in [cmd_name] if cmd_name in LAZY_COMMANDS else LAZY_COMMANDS:
                self.commands[name] = _lazy_command(name)
        return super().get_command(ctx, cmd_name)


def _lazy_command(name: str):
    module, _ = LAZY_COMMANDS[name]
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=MARKUP)
    single.command(name, cls=Command)(getattr(importlib.import_module(module), name))
    return typer.main.get_command(single)


app = typer.Typer(
    cls=Commands,
    name="gradprobe",
    help="Gradient diagnostics and clipping for PyTorch and TensorFlow/Keras training.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=MARKUP,
)


def _version(value: bool) -> None:
    if value:
        print(f"gradprobe {__version__}")
        raise typer.Exit()


_debug = False


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error instead of "
                               "one line."),
) -> None:
    """Gradient diagnostics and clipping for PyTorch and TensorFlow/Keras training."""
    global _debug
    _debug = debug


app.command(cls=Command, context_settings=SCRIPT_CONTEXT)(profile)
app.command(cls=Command, context_settings=SCRIPT_CONTEXT)(run)
app.command(cls=Command, context_settings=SCRIPT_CONTEXT)(tune)
app.command(cls=Command)(apply)
app.command(cls=Command)(export)


class ReportFormat(str, Enum):
    """Output formats of ``report`` and ``compare``."""

    terminal = "terminal"
    html = "html"
    markdown = "markdown"
    json = "json"


GROUP_HELP = ("Layer group NAME=GLOB on layer names, for the imbalance check (repeatable; "
              "default: the recorded top-level modules).")


def _deliver(text: str, output: Optional[Path]) -> None:
    """Print ``text`` to stdout, or write it to ``output`` and say where on stderr."""
    from gradprobe.reports.render import write_output

    if output is None:
        sys.stdout.write(text)
        return
    write_output(text, output)
    print(f"gradprobe: wrote {visible(output)}", file=sys.stderr)


def _write_skip_file(built) -> None:
    """Write ``RUN/skip-samples.json`` when findings name the samples of their steps."""
    from gradprobe.analysis.batch_blame import skip_samples
    from gradprobe.store.skip_samples_file import SKIP_FILE, write_skip_samples

    samples = skip_samples(built.findings)
    if not samples:
        return
    try:
        write_skip_samples(built.run.path / SKIP_FILE, samples)
    except OSError as exc:
        print(f"gradprobe: cannot write {visible(built.run.path / SKIP_FILE)}: {visible(exc)}", file=sys.stderr)


def _report_path(targets) -> Path:
    """Where ``report -f html`` writes without ``-o``: in the run, or beside several runs (their
    common parent directory, such as the tune directory of its trials)."""
    folder = targets[0].path if len(targets) == 1 else Path(os.path.commonpath([t.path.resolve() for t in targets]))
    output = folder / "report.html"
    if output.is_symlink():  # a run directory from elsewhere must not redirect the write
        raise GradprobeError(f"{output} is a symbolic link; choose where to write with -o FILE")
    return output


@app.command(cls=Command)
def report(
    run: Optional[List[str]] = typer.Argument(None, help="Run directories or names (default: the latest run); "
                                              "with --format html several runs, or a tune directory of "
                                              "trials, are overlaid in one report."),
    root: Path = typer.Option(Path(DEFAULT_ROOT), "--root", help="Where to look for run names."),
    fmt: ReportFormat = typer.Option(ReportFormat.terminal, "--format", "-f", help="Output format."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to FILE instead of stdout "
                                          "(html: default RUN/report.html, or beside several runs)."),
    group: List[str] = typer.Option([], "--group", "-g", help=GROUP_HELP),
) -> None:
    """Diagnose a recorded run: findings first, then norms, clip recommendations and layers.

    [bold]gradprobe report[/bold] (latest run, in the terminal)
    [bold]gradprobe report RUN --format html[/bold] (one self-contained, interactive file)
    [bold]gradprobe report RUN_A RUN_B --format html[/bold] (several runs overlaid)
    [bold]gradprobe report RUN --format json[/bold] (findings and recommendations for machines)

    Findings: explosion, vanishing, spike, nonfinite, dead_layer,
    clip_saturation, imbalance, task_conflict, task_imbalance,
    rank_divergence, each with a severity (info, warning, critical), the
    layers and steps concerned, the numbers and advice.
    """
    from gradprobe.reports.progress import stages
    from gradprobe.reports.render import render_terminal_text, render_text
    from gradprobe.reports.summary import REPORT_STAGES, build_report
    from gradprobe.reports.terminal import render_report
    from gradprobe.store import resolve_runs

    targets = resolve_runs(run or [], root)
    if len(targets) > 1 and fmt != ReportFormat.html:
        raise GradprobeError(f"{len(targets)} runs go in one report with --format html only; "
                             "`gradprobe compare RUN_A RUN_B` puts two side by side in the terminal")
    figures = sum(len(t.meta.get("optimizers") or [None]) for t in targets) if fmt == ReportFormat.html else 0
    with stages(REPORT_STAGES * len(targets) + figures) as progress:
        reports = [build_report(target, group, progress) for target in targets]
        built = reports[0]
        if fmt == ReportFormat.terminal:
            text = None if output is None else render_terminal_text(lambda console: render_report(built, console))
        else:
            text = render_text(reports if len(reports) > 1 else built, fmt.value, progress)
    for each in reports:
        _write_skip_file(each)
    if text is None:
        render_report(built)
        return
    if fmt == ReportFormat.html and output is None:
        output = _report_path(targets)
    _deliver(text, output)


@app.command(cls=Command)
def compare(
    run_a: str = typer.Argument(..., help="First run (directory or name), e.g. before clipping."),
    run_b: str = typer.Argument(..., help="Second run, e.g. after clipping."),
    root: Path = typer.Option(Path(DEFAULT_ROOT), "--root", help="Where to look for run names."),
    fmt: ReportFormat = typer.Option(ReportFormat.terminal, "--format", "-f",
                                     help="Output format (terminal, markdown or json)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to FILE instead of stdout."),
    group: List[str] = typer.Option([], "--group", "-g", help=GROUP_HELP),
) -> None:
    """Put two runs side by side: norms, loss, clipping, findings and per-layer medians.

    [bold]gradprobe compare before after[/bold]
    """
    from gradprobe.reports.compare import render_compare_json, render_compare_markdown, render_compare_terminal
    from gradprobe.reports.progress import stages
    from gradprobe.reports.render import render_terminal_text
    from gradprobe.reports.summary import REPORT_STAGES, build_report
    from gradprobe.store import resolve_run

    if fmt == ReportFormat.html:
        raise GradprobeError("compare writes terminal, markdown or json; `gradprobe report RUN_A RUN_B "
                             "--format html` overlays runs in one page")
    targets = [resolve_run(run_a, root), resolve_run(run_b, root)]
    with stages(2 * REPORT_STAGES) as progress:
        a, b = (build_report(target, group, progress) for target in targets)
    if fmt == ReportFormat.terminal and output is None:
        render_compare_terminal(a, b)
        return
    renderers = {
        ReportFormat.terminal: lambda: render_terminal_text(lambda console: render_compare_terminal(a, b, console)),
        ReportFormat.markdown: lambda: render_compare_markdown(a, b),
        ReportFormat.json: lambda: render_compare_json(a, b),
    }
    _deliver(renderers[fmt](), output)


@app.command("ls", cls=Command)
def list_command(
    root: Path = typer.Argument(Path(DEFAULT_ROOT), help="Root directory of runs."),
) -> None:
    """List the runs under ROOT with status, steps, script and start time."""
    from gradprobe.reports.terminal import render_run_list
    from gradprobe.store import list_runs

    if not root.is_dir():
        raise GradprobeError(f"{root}: no such directory")
    render_run_list(list_runs(root))


# Typer's UsageError: click's own, or the copy newer Typer versions vendor.
UsageError = next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "UsageError")


def main() -> None:
    """Console entry point: usage and user errors become one line on stderr and exit status 2,
    unexpected ones a one-line internal error and exit status 1; ``--debug`` adds the traceback."""
    try:
        code = app(prog_name="gradprobe", standalone_mode=False)
    except UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `gradprobe`: the help, as before
            exc.show()
        else:
            _error(usage_message(exc))
        sys.exit(exc.exit_code)
    except GradprobeError as exc:
        _show_traceback()
        _error(str(exc))
        sys.exit(2)
    except typer.Abort:
        print("gradprobe: aborted", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        _show_traceback()
        hint = "" if _debug else " (run `gradprobe --debug ...` for the traceback)"
        print(f"gradprobe: internal error: {type(exc).__name__}: {one_line(exc)}{hint}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def usage_message(exc: Exception) -> str:
    """A usage error as one sentence: the option it is about, what is wrong, where help is."""
    hint = getattr(exc, "param_hint", None) or getattr(getattr(exc, "param", None), "opts", None)
    about = ""
    if hint and type(exc).__name__ != "MissingParameter":  # "Missing argument 'script'" names it
        about = " / ".join(hint) if isinstance(hint, (list, tuple)) else str(hint)
        about = about.replace("'", "") + ": "
    message = getattr(exc, "message", None) if about else None
    command = getattr(getattr(exc, "ctx", None), "command_path", "gradprobe")
    return f"{about}{message or exc.format_message()} (see `{command} --help`)"


def _error(message: str) -> None:
    print(f"gradprobe: error: {one_line(message)}", file=sys.stderr)


def _show_traceback() -> None:
    if _debug:
        traceback.print_exc(file=sys.stderr)
