"""Self-contained HTML report: one file, inline CSS, figures embedded as base64 PNG, names escaped."""

from __future__ import annotations

import base64
from typing import Sequence

from gradprobe.reports.escape import html_text as escape
from gradprobe.reports.figures import Plot, group_plot, stream_plots, task_plot
from gradprobe.reports.progress import Stages, quiet_stages
from gradprobe.reports.summary import Report, clip_stats, global_norm_stats, layer_stats, loss_stats, optimizer_label
from gradprobe.reports.summary import noise_stats, update_ratio_stats
from gradprobe.reports.terminal import fmt, step_range

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.critical { color: #b00020; font-weight: bold; } .warning { color: #b35c00; font-weight: bold; }
.info { color: #1f5fa8; } .ok { color: #1b7f3b; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """An HTML table; cells must already be escaped HTML."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(plot: Plot) -> str:
    data = base64.b64encode(plot.png()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{escape(plot.title)}">'
            f"<figcaption><b>{escape(plot.title)}.</b> {escape(plot.caption)}</figcaption></figure>")


def _run_section(report: Report) -> str:
    meta = report.run.meta
    framework = meta.get("framework") or {}
    rows = [
        ["status", escape(str(meta.get("status")))],
        ["framework", escape(f"{framework.get('name', '?')} {framework.get('version', '')}")],
        ["script", escape(str(meta.get("script")))],
        ["arguments", escape(" ".join(map(str, meta.get("argv") or [])))],
        ["exit code", escape(str(meta.get("exit_code")))],
    ]
    if meta.get("error"):
        rows.append(["error", f'<span class="critical">{escape(str(meta["error"]))}</span>'])
    rows += [["note", f'<span class="warning">{escape(note)}</span>'] for note in report.run.notes]
    for stream in report.streams:
        stats = global_norm_stats(stream.steps)
        text = (f"{stats['steps']} steps; global norm median {fmt(stats['median'])}, p95 {fmt(stats['p95'])}, "
                f"max {fmt(stats['max'])}; non-finite {stats['nonfinite_steps']}, skipped {stats['skipped_steps']}")
        loss = loss_stats(stream.steps)
        if loss:
            text += f"; loss {fmt(loss['first'])} to {fmt(loss['last'])} (min {fmt(loss['min'])})"
        clip = clip_stats(stream.steps)
        if clip:
            text += (f"; recorded clipping at {fmt(clip['threshold_median'])} fired on "
                     f"{clip['clipped_fraction']:.1%} of steps")
        updates = update_ratio_stats(stream)
        if updates:
            text += f"; update/weight ratio median {fmt(updates['median'])} per step (rule of thumb ~1e-3)"
        scale = noise_stats(report.run, stream)
        if scale:
            text += f"; gradient noise scale B_simple {fmt(scale['b_simple'])} {scale['unit']}: {scale['advice']}"
        rows.append([escape(optimizer_label(report.run, stream.optimizer)), escape(text)])
    return _table(["run", escape(report.name)], rows)


def _findings_section(report: Report) -> str:
    if not report.findings:
        return '<p class="ok">No problems found.</p>'
    rows = [[f'<span class="{f.severity}">{f.severity}</span>', escape(f.kind), step_range(f.steps),
             escape(", ".join(f.layers)) or "-", escape(f.advice)] for f in report.findings]
    return _table(["severity", "kind", "steps", "layers", "advice"], rows)


def _recommendations_section(report: Report) -> str:
    if not report.recommendations:
        return ""
    rows = []
    for rec in report.recommendations:
        row = rec.to_dict()
        rows.append([f"<code>{escape(row['spec'])}</code>", f"{row['clipped_fraction']:.1%}",
                     fmt(row["mean_scale"]), fmt(row["min_scale"]), escape(row["rationale"])])
    return "<h2>Clip recommendations</h2>" + _table(
        ["spec", "clipped", "mean scale", "min scale", "rationale"], rows, numeric=(1, 2, 3))


def _layers_section(report: Report) -> str:
    stats = layer_stats(report.run)
    ratio = {}
    for stream in report.streams:
        updates = update_ratio_stats(stream)
        if updates:
            ratio.update(zip(stream.layer_ids.tolist(), updates["layers"]))
    rows = [[escape(str(r["name"])), escape(str(r["group"])), f"{r.numel:,}", fmt(r["median"]), fmt(r.p95),
             fmt(r["max"]), f'<span class="critical">{r.nonfinite}</span>' if r.nonfinite else "0",
             *([fmt(float(ratio.get(layer_id, float("nan"))))] if ratio else [])]
            for layer_id, r in stats.iterrows()]
    header = ["layer", "group", "numel", "median", "p95", "max", "non-finite"] + (["update/weight"] if ratio else [])
    return "<h2>Layers (input to output)</h2>" + _table(header, rows, numeric=tuple(range(2, len(header))))


def render_html(report: Report, stages: Stages | None = None) -> str:
    """The whole report as one HTML document that needs no network access."""
    stages = stages or quiet_stages()
    parts = [f"<h1>gradprobe report: {escape(report.name)}</h1>", _run_section(report),
             "<h2>Findings</h2>", _findings_section(report), _recommendations_section(report)]
    for stream in report.streams:
        with stages.stage(f"drawing figures ({optimizer_label(report.run, stream.optimizer)})"):
            if len(report.streams) > 1:
                parts.append(f"<h2>{escape(optimizer_label(report.run, stream.optimizer))}</h2>")
            thresholds = {r.spec: r.threshold_series(stream.optimizer) for r in report.recommendations
                          if r.threshold_series(stream.optimizer) is not None}
            for plot in stream_plots(report, stream, thresholds):
                parts.append(_figure(plot))
            groups = group_plot(stream, report.groups) if len(stream.sampled) else None
            if groups is not None:
                parts.append(_figure(groups))
    if report.tasks is not None and len(report.tasks):
        parts.append(_figure(task_plot(report.tasks)))
    parts.append(_layers_section(report))
    body = "\n".join(part for part in parts if part)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>gradprobe report: {escape(report.name)}</title><style>{STYLE}</style></head>"
            f"<body>\n{body}\n</body></html>\n")
