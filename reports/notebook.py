"""Jupyter views of a run: a compact HTML summary (``Run._repr_html_``) and its figures (``Run.plot``)."""

from __future__ import annotations

from typing import Sequence

from matplotlib.figure import Figure

from gradprobe.reports.escape import html_text as escape, html_with_code
from gradprobe.reports.escape import mpl
from gradprobe.reports.figures import stream_plots
from gradprobe.reports.sparkline import sparkline
from gradprobe.reports.summary import Report, build_report, clip_stats, global_norm_stats, loss_stats, optimizer_label
from gradprobe.reports.terminal import fmt, layer_list, step_range
from gradprobe.store import Run

MAX_FINDINGS = 5
SPARK_WIDTH = 40
SEVERITY_COLOURS = {"critical": "#b00020", "warning": "#b35c00", "info": "#1f5fa8"}
STATUS_COLOURS = {"finished": "#1b7f3b", "running": "#1f5fa8", "crashed": "#b00020", "interrupted": "#b35c00"}
CELL = 'style="text-align:left;padding:0.15em 0.6em"'


def _coloured(text: str, colour: str | None) -> str:
    return f'<span style="color:{colour};font-weight:bold">{escape(text)}</span>' if colour else escape(text)


def _row(*cells: str) -> str:
    return "<tr>" + "".join(f"<td {CELL}>{cell}</td>" for cell in cells) + "</tr>"


def _optimizer_rows(report: Report) -> list[str]:
    rows = []
    for stream in report.streams:
        stats = global_norm_stats(stream.steps)
        text = (f"{stats['steps']} steps; global norm median {fmt(stats['median'])}, p95 {fmt(stats['p95'])}, "
                f"max {fmt(stats['max'])}")
        if stats["nonfinite_steps"] or stats["skipped_steps"]:
            text += f"; non-finite {stats['nonfinite_steps']}, skipped {stats['skipped_steps']}"
        loss = loss_stats(stream.steps)
        if loss:
            text += f"; loss {fmt(loss['first'])} to {fmt(loss['last'])}"
        clip = clip_stats(stream.steps)
        if clip:
            text += f"; clipping at {fmt(clip['threshold_median'])} fired on {clip['clipped_fraction']:.1%} of steps"
        spark = sparkline(stream.steps["global_norm"].to_numpy(), SPARK_WIDTH)
        rows.append(_row(escape(optimizer_label(report.run, stream.optimizer)),
                         f"{escape(text)}<br><code>{escape(spark)}</code>"))
    return rows


def _finding_rows(report: Report) -> list[str]:
    if not report.findings:
        return [_row("findings", _coloured("no problems found", "#1b7f3b"))]
    rows = [_row(_coloured(f.severity, SEVERITY_COLOURS.get(f.severity)),
                 f"<b>{escape(f.kind)}</b> at steps {step_range(f.steps)}"
                 + (f" in {escape(layer_list(f.layers))}" if f.layers else "") + f": {html_with_code(f.advice)}")
            for f in report.findings[:MAX_FINDINGS]]
    if len(report.findings) > MAX_FINDINGS:
        rows.append(_row("", f"+{len(report.findings) - MAX_FINDINGS} more: <code>gradprobe report "
                             f"{escape(str(report.run.path))}</code>"))
    return rows


def summary_html(run: Run, groups: Sequence[str] = ()) -> str:
    """A compact HTML table of ``run``: status, each optimizer's norms (with a sparkline), loss and
    clipping, and the most severe findings. ``groups``: ``NAME=GLOB`` layer groups for the imbalance check."""
    report = build_report(run, groups, strategies=())
    meta = run.meta
    framework = meta.get("framework") or {}
    status = str(meta.get("status"))
    head = (f"<b>gradprobe run {escape(run.name)}</b> {_coloured(status, STATUS_COLOURS.get(status))} "
            f"{escape(str(framework.get('name', '?')))} {escape(str(framework.get('version', '')))}")
    rows = [_row("run", f"{head}<br><code>{escape(str(run.path))}</code>")]
    if meta.get("error"):
        rows.append(_row("error", _coloured(str(meta["error"]), SEVERITY_COLOURS["critical"])))
    rows += [_row("note", _coloured(note, SEVERITY_COLOURS["warning"])) for note in run.notes]
    rows += _optimizer_rows(report) + _finding_rows(report)
    return f'<table style="border-collapse:collapse">{"".join(rows)}</table>'


def run_figures(run: Run, groups: Sequence[str] = ()) -> list[Figure]:
    """The figures of ``gradprobe report --format html``, per optimizer: global norm and loss over time
    (findings marked), and with per-layer statistics the layer heatmap, norm distributions and gradient flow."""
    report = build_report(run, groups, strategies=())
    figures = []
    for stream in report.streams:
        prefix = f"{optimizer_label(run, stream.optimizer)}: " if len(report.streams) > 1 else ""
        for plot in stream_plots(report, stream):
            plot.figure.suptitle(mpl(prefix + plot.title), fontsize=11)
            figures.append(plot.figure)
    return figures
