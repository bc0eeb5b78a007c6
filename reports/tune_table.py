"""The ranked table and the choice that ``gradprobe tune`` prints."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from gradprobe.reports.suggest import clip_commands
from gradprobe.reports.terminal import fmt, stdout_console
from gradprobe.tuning import TuneResult

STATUS_STYLES = {"ok": "green", "exploding": "yellow", "diverged": "red", "failed": "red"}


def render_tune(result: TuneResult, console: Console | None = None) -> None:
    """Print the candidates best first (mean score ± std over seeds), the verdict and how to use it."""
    console = console or stdout_console()
    table = Table(title=f"gradprobe tune: {result.path}", title_justify="left")
    for column, justify in (("#", "right"), ("candidate", "left"), ("spec", "left"), ("score", "right"),
                            ("± std", "right"), ("trials", "right"), ("clipped", "right"), ("s/trial", "right"),
                            ("status", "left")):
        table.add_column(column, justify=justify)
    repeats = max((len(s.scores) for s in result.ranking), default=1)
    once = [s for s in result.ranking if len(s.scores) < repeats]
    for rank, summary in enumerate(result.ranking, 1):
        if once and summary is once[0]:
            table.add_section()  # below: candidates tried with the first seed only
        chosen = summary is result.chosen
        style = STATUS_STYLES.get(summary.status, "")
        table.add_row(
            f"{rank}{' *' if chosen else ''}", summary.label, summary.spec or "-", fmt(summary.mean),
            "-" if math.isnan(summary.std) else fmt(summary.std), str(len(summary.scores)),
            f"{summary.clip_fraction:.0%}", _seconds(result, summary.spec),
            f"[{style}]{summary.status}[/{style}]" if style else summary.status,
            style="bold" if chosen else None,
        )
    console.print(table)
    console.print(f"score: {_score_meaning(result)}, averaged over the seeds"
                  + ("; candidates below the line ran with the first seed only" if once else "")
                  + f"; {len(result.trials)} trials took {sum(t.seconds for t in result.trials):.0f} s",
                  highlight=False)
    console.print(f"verdict: {result.verdict}", highlight=False)
    if result.chosen is None:
        return
    if result.chosen.spec is None:
        console.print("chosen: no clipping")
    else:
        console.print(f"chosen: [bold]{result.chosen.spec}[/bold]", highlight=False)
        config = result.config
        commands = clip_commands(result.path, config.script if config else "SCRIPT", config.args if config else ())
        for lead, command in zip(("use it", "    or"), commands):
            # One line whatever the width, no markup: the command copies as it is.
            console.print(f"{lead}: {command}", markup=False, highlight=False, soft_wrap=True)


def _seconds(result: TuneResult, spec: str | None) -> str:
    """Mean wall time of a candidate's trials."""
    seconds = [t.seconds for t in result.trials if t.candidate.spec == spec]
    return f"{sum(seconds) / len(seconds):.1f}" if seconds else "-"


def _score_meaning(result: TuneResult) -> str:
    config = result.config
    if config is None or config.metric is None:
        return "median recorded loss over the last 10% of steps (lower is better)"
    return f"last value of --metric {config.metric!r} ({'higher' if config.maximize else 'lower'} is better)"
