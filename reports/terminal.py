"""Terminal renderer (rich): reports and run lists; colour marks severity, status and non-finite counts."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Callable, Sequence

from rich.console import Console
from rich.table import Table

from gradprobe.analysis import Recommendation
from gradprobe.reports.escape import terminal as escape
from gradprobe.reports.sparkline import sparkline
from gradprobe.reports.summary import Report, clip_stats, global_norm_stats, layer_stats, loss_stats, optimizer_label
from gradprobe.reports.summary import noise_stats, task_stats, update_ratio_stats
from gradprobe.store import Run

_STATUS_STYLE = {"finished": "green", "running": "cyan", "crashed": "red", "interrupted": "yellow"}


def stdout_console() -> Console:
    """The console reports print to: the terminal's own width, or 160 columns when piped to a file."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def fmt(value: float) -> str:
    """A norm in 4 significant digits, ``-`` when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"


def _when(timestamp: float | None) -> str:
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S") if timestamp else "-"


def _status(meta: dict) -> str:
    status = str(meta.get("status"))
    return f"[{_STATUS_STYLE.get(status, 'white')}]{escape(status)}[/]"


SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
MAX_LAYERS_SHOWN = 3
SPARK_WIDTH = 40
LAYER_SPARK_WIDTH = 20


def severity_text(severity: str) -> str:
    """The severity in its colour."""
    return f"[{SEVERITY_STYLE.get(severity, 'white')}]{escape(severity)}[/]"


def layer_list(layers: Sequence[str], limit: int = MAX_LAYERS_SHOWN) -> str:
    """The first ``limit`` layer names, and how many more there are."""
    shown = ", ".join(layers[:limit])
    return shown + (f" (+{len(layers) - limit} more)" if len(layers) > limit else "")


def step_range(steps: Sequence[int]) -> str:
    """``12`` or ``12-340``."""
    return str(steps[0]) if steps[0] == steps[1] else f"{steps[0]}-{steps[1]}"


def _header(report: Report, console: Console) -> None:
    run, meta = report.run, report.run.meta
    framework = meta.get("framework") or {}
    console.print(f"[bold]{escape(run.name)}[/bold]  {_status(meta)}  "
                  f"{escape(str(framework.get('name', '?')))} {escape(str(framework.get('version', '')))}")
    console.print(f"script: {escape(str(meta.get('script')))}  started {_when(meta.get('start_time'))}"
                  f"  exit code {meta.get('exit_code')}")
    if meta.get("error"):
        console.print(f"error: [red]{escape(str(meta['error']))}[/red]")
    for note in run.notes:
        console.print(f"note: [yellow]{escape(note)}[/yellow]")


def _findings(report: Report, console: Console) -> None:
    if not report.findings:
        console.print("[green]No problems found.[/green]")
        return
    table = Table(title=f"findings ({len(report.findings)})", title_justify="left")
    for column in ("severity", "kind", "steps", "layers", "advice"):
        table.add_column(column, overflow="fold", ratio=4 if column == "advice" else None)
    for finding in report.findings:
        table.add_row(severity_text(finding.severity), finding.kind, step_range(finding.steps),
                      escape(layer_list(finding.layers)), escape(finding.advice))
    console.print(table)


def _streams(report: Report, console: Console) -> None:
    for stream in report.streams:
        stats = global_norm_stats(stream.steps)
        norms = stream.steps["global_norm"].to_numpy()
        console.print(f"[bold]{escape(optimizer_label(report.run, stream.optimizer))}[/bold]: {stats['steps']} steps, "
                      f"non-finite {stats['nonfinite_steps']}, skipped {stats['skipped_steps']}")
        console.print(f"  global norm {sparkline(norms, SPARK_WIDTH)}  median {fmt(stats['median'])}  "
                      f"p95 {fmt(stats['p95'])}  max {fmt(stats['max'])}")
        loss = loss_stats(stream.steps)
        if loss:
            console.print(f"  loss {sparkline(stream.steps['loss'].to_numpy(), SPARK_WIDTH, log=False)}  "
                          f"first {fmt(loss['first'])}  last {fmt(loss['last'])}  min {fmt(loss['min'])}")
        clip = clip_stats(stream.steps)
        if clip:
            console.print(f"  clipping at {fmt(clip['threshold_median'])} fired on {clip['clipped_fraction']:.1%} "
                          f"of {clip['steps']} steps, mean scale {fmt(clip['mean_scale'])}")
        updates = update_ratio_stats(stream)
        if updates:
            console.print(f"  update/weight {sparkline(updates['over_time'], SPARK_WIDTH)}  median over layers "
                          f"{fmt(updates['median'])} per step (rule of thumb ~{updates['rule_of_thumb']:g})")
        scale = noise_stats(report.run, stream)
        if scale:
            console.print(f"  noise scale {sparkline(scale['over_time'], SPARK_WIDTH)}  B_simple "
                          f"{fmt(scale['b_simple'])} {scale['unit']} at step {scale['step']} "
                          f"({scale['steps']} measured steps): {escape(scale['advice'])}")


def _tasks(report: Report, console: Console) -> None:
    rows = task_stats(report.tasks)
    if not rows:
        return
    table = Table(title="task gradients on the shared parameters (gradprobe.task_gradients)", title_justify="left")
    for column, justify in (("series", "left"), ("median", "right"), ("max", "right"), ("negative", "right"),
                            ("over time", "left")):
        table.add_column(column, justify=justify, overflow="fold" if column == "series" else None,
                         no_wrap=column == "over time")
    for row in rows:
        cosine = row["negative"] is not None
        negative = "-" if not cosine else f"{row['negative']:.0%}"
        table.add_row(escape(row["series"]), fmt(row["median"]), fmt(row["max"]), negative,
                      sparkline(row["values"], LAYER_SPARK_WIDTH, log=not cosine))
    console.print(table)


def render_recommendations(recommendations: Sequence[Recommendation], console: Console | None = None,
                           notes: Sequence[str] = (), measured: Callable[[Recommendation], str | None] | None = None
                           ) -> None:
    """Print the recommendations as a table: spec, what-if numbers, the score a tune measured (when
    ``measured`` knows one), rationale; then ``notes``, what to know to read the what-if."""
    console = console or stdout_console()
    if not recommendations:
        console.print("No recommendation: the run has no usable gradient norms.")
        return
    scores = [measured(rec) if measured else None for rec in recommendations]
    columns = [("spec", "left"), ("clipped", "right"), ("mean scale", "right"), ("min scale", "right")]
    columns += [("measured by tune", "right")] if any(scores) else []
    table = Table(title="clip recommendations (what-if on the recorded steps)", title_justify="left")
    for column, justify in columns + [("rationale", "left")]:
        table.add_column(column, justify=justify, overflow="fold", ratio=3 if column == "rationale" else None,
                         no_wrap=column == "spec")
    for rec, score in zip(recommendations, scores):
        row = rec.to_dict()
        spec = row["spec"] + (f" (optimizer {row['optimizer']})" if "optimizer" in row else "")
        cells = [escape(spec), f"{row['clipped_fraction']:.1%}", fmt(row["mean_scale"]), fmt(row["min_scale"])]
        cells += [escape(score or "-")] if any(scores) else []
        table.add_row(*cells, escape(row["rationale"]))
    console.print(table)
    for note in notes:
        console.print(f"[dim]{escape(note)}[/dim]")


def _layers(report: Report, console: Console) -> None:
    stats = layer_stats(report.run)
    for stream in report.streams:
        title = "per-layer gradient L2 norms (input to output)"
        if len(report.streams) > 1:
            title += f", {optimizer_label(report.run, stream.optimizer)}"
        table = Table(title=escape(title), title_justify="left")
        for column, justify in (("layer", "left"), ("numel", "right"), ("median", "right"), ("p95", "right"),
                                ("max", "right"), ("non-finite", "right"), ("over time", "left")):
            table.add_column(column, justify=justify, overflow="fold" if column == "layer" else None,
                             no_wrap=column == "over time")
        updates = update_ratio_stats(stream)
        if updates:
            table.add_column("update/weight", justify="right")
        norms = stream.matrix("norm")
        for j, layer_id in enumerate(stream.layer_ids):
            row = stats.loc[layer_id]
            nonfinite = f"[red]{row.nonfinite}[/red]" if row.nonfinite else "0"
            table.add_row(escape(str(row["name"])), f"{row.numel:,}", fmt(row["median"]), fmt(row.p95),
                          fmt(row["max"]), nonfinite, sparkline(norms[:, j], LAYER_SPARK_WIDTH),
                          *([fmt(float(updates["layers"][j]))] if updates else []))
        console.print(table)


def render_report(report: Report, console: Console | None = None) -> None:
    """Print the report: run header, findings first, global norms, recommendations, layer table."""
    console = console or stdout_console()
    _header(report, console)
    _findings(report, console)
    _streams(report, console)
    _tasks(report, console)
    if report.recommendations:
        render_recommendations(report.recommendations, console, report.what_if_notes, report.measured)
    _layers(report, console)


def render_run_list(runs: Sequence[Run], console: Console | None = None) -> None:
    """Print one line per run: name, status, steps, script, start time."""
    console = console or stdout_console()
    table = Table()
    table.add_column("run", no_wrap=True, min_width=max((len(run.name) for run in runs), default=3))
    table.add_column("status")
    table.add_column("steps", justify="right")
    table.add_column("script", overflow="fold")
    table.add_column("started")
    for run in runs:
        meta = run.meta
        steps = (meta.get("progress") or {}).get("steps", 0)
        script = Path(meta["script"]).name if meta.get("script") else "-"
        status = "[red]ended abruptly[/]" if run.ended_abruptly else _status(meta)
        table.add_row(escape(run.name), status, str(steps), escape(script),
                      _when(meta.get("start_time")))
    console.print(table)
