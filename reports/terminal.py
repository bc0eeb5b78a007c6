"""Terminal renderer (rich): run summaries and run lists."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gradprobe.reports.summary import global_norm_stats, layer_stats
from gradprobe.store import Run

_STATUS_STYLE = {"finished": "green", "running": "cyan", "crashed": "red", "interrupted": "yellow"}


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


def render_summary(run: Run, console: Console | None = None) -> None:
    """Print the run header, global-norm statistics and the per-layer table."""
    console = console or Console()
    meta = run.meta
    stats = global_norm_stats(run.steps)
    framework = meta.get("framework") or {}
    console.print(f"[bold]{escape(run.name)}[/bold]  {_status(meta)}  "
                  f"{escape(str(framework.get('name', '?')))} {escape(str(framework.get('version', '')))}")
    console.print(f"script: {escape(str(meta.get('script')))}  started {_when(meta.get('start_time'))}"
                  f"  exit code {meta.get('exit_code')}")
    if meta.get("error"):
        console.print(f"error: [red]{escape(str(meta['error']))}[/red]")
    console.print(
        f"steps recorded: {stats['steps']}  global norm median {fmt(stats['median'])}  "
        f"p95 {fmt(stats['p95'])}  max {fmt(stats['max'])}  "
        f"non-finite steps {stats['nonfinite_steps']}  skipped {stats['skipped_steps']}"
    )
    table = Table(title="per-layer gradient L2 norms (input to output)", title_justify="left")
    for column, justify in (("layer", "left"), ("numel", "right"), ("median", "right"), ("p95", "right"),
                            ("max", "right"), ("non-finite", "right")):
        table.add_column(column, justify=justify)
    for row in layer_stats(run).itertuples():
        nonfinite = f"[red]{row.nonfinite}[/red]" if row.nonfinite else "0"
        table.add_row(escape(str(row.name)), f"{row.numel:,}", fmt(row.median), fmt(row.p95), fmt(row.max),
                      nonfinite)
    console.print(table)


def render_run_list(runs: Sequence[Run], console: Console | None = None) -> None:
    """Print one line per run: name, status, steps, script, start time."""
    console = console or Console()
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
        table.add_row(escape(run.name), _status(meta), str(steps), escape(script),
                      _when(meta.get("start_time")))
    console.print(table)
