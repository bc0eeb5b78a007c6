"""Self-contained HTML report of one or several runs: one file that works offline, with
interactive Plotly charts (the library and the downsampled data inline, a Content-Security-Policy
that forbids any network request), the tables of each run, and the figures without an interactive
counterpart as PNG. Recorded names are escaped everywhere."""

from __future__ import annotations

import base64
import json
from importlib import resources
from typing import Sequence

from gradprobe.reports.escape import html_text as escape, html_with_code
from gradprobe.reports.chart_data import chart_data
from gradprobe.reports.figures import (Plot, distribution_plot, flow_plot, group_plot, noise_plot, task_plot,
                                      update_ratio_plot)
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
.controls { position: sticky; top: 0; z-index: 10; background: #fafafa; border: 1px solid #ddd;
  padding: 0.5em 0.8em; display: flex; flex-wrap: wrap; gap: 0.5em 1.5em; font-size: 0.9em; }
.controls label { white-space: nowrap; }
.chart { min-height: 100px; }
details > summary { cursor: pointer; font-size: 1.3em; font-weight: bold; margin: 1em 0 0.5em; }
"""

# Inline scripts and styles and data: images only; no request can leave the page.
POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
          "font-src data:; connect-src 'none'")

CONTROLS = """
<div class="controls">
<label>y axis <select id="gp-scale-select"><option value="log">log</option>
<option value="linear">linear</option></select></label>
<label>smoothing <input id="gp-smooth" type="range" min="0" max="0.99" step="0.01" value="0">
<span id="gp-smooth-value">0</span></label>
<label>x axis <select id="gp-x"><option value="step">step</option>
<option value="time">wall time</option></select></label>
</div>
<div id="gp-norm" class="chart"></div>
<div id="gp-loss" class="chart"></div>
<div id="gp-scale" class="chart"></div>
<section id="gp-layer-section">
<div class="controls">
<label>run <select id="gp-layer-stream"></select></label>
<label>layer search <input id="gp-search" type="search" placeholder="name or regular expression"></label>
<label>group <select id="gp-group"><option value="">all groups</option></select></label>
<label>show <select id="gp-metric"><option value="log_norm">gradient norm</option>
<option value="log_ratio">gradient / weight norm</option>
<option value="log_update_ratio">update / weight norm</option></select></label>
<span id="gp-layer-count"></span>
</div>
<div id="gp-layers" class="chart"></div>
<div id="gp-heatmap" class="chart"></div>
</section>
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
             escape(", ".join(f.layers)) or "-", html_with_code(f.advice)] for f in report.findings]
    return _table(["severity", "kind", "steps", "layers", "advice"], rows)


def _recommendations_section(report: Report) -> str:
    if not report.recommendations:
        return ""
    scores = [report.measured(rec) for rec in report.recommendations]
    measured = any(scores)
    rows = []
    for rec, score in zip(report.recommendations, scores):
        row = rec.to_dict()
        rows.append([f"<code>{escape(row['spec'])}</code>", f"{row['clipped_fraction']:.1%}",
                     fmt(row["mean_scale"]), fmt(row["min_scale"]), *([escape(score or "-")] if measured else []),
                     escape(row["rationale"])])
    header = ["spec", "clipped", "mean scale", "min scale", *(["measured by tune"] if measured else []), "rationale"]
    notes = "".join(f"<li>{html_with_code(note)}</li>" for note in report.what_if_notes)
    return ("<h2>Clip recommendations</h2>" + _table(header, rows, numeric=(1, 2, 3))
            + (f'<ul class="notes">{notes}</ul>' if notes else ""))


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


def _script_json(value) -> str:
    """``value`` as JSON that cannot close the ``<script>`` element holding it."""
    text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _static_figures(report: Report, stages: Stages) -> list[str]:
    """The figures without an interactive chart: per-layer distributions, gradient flow, layer
    groups, update-to-weight ratios, the gradient noise scale and task gradients, as PNG."""
    parts = []
    for stream in report.streams:
        with stages.stage(f"drawing figures ({optimizer_label(report.run, stream.optimizer)})"):
            prefix = f"{optimizer_label(report.run, stream.optimizer)}: " if len(report.streams) > 1 else ""
            plots = [distribution_plot(stream), flow_plot(stream)] if len(stream.sampled) and len(stream.names) else []
            groups = group_plot(stream, report.groups) if len(stream.sampled) else None
            plots += [plot for plot in (groups, update_ratio_plot(stream), noise_plot(report, stream))
                      if plot is not None]
            for plot in plots:
                plot.title = prefix + plot.title
                parts.append(_figure(plot))
    if report.tasks is not None and len(report.tasks):
        parts.append(_figure(task_plot(report.tasks)))
    return parts


def _run_sections(report: Report, stages: Stages) -> str:
    parts = [_run_section(report), "<h2>Findings</h2>", _findings_section(report), _recommendations_section(report),
             *_static_figures(report, stages), _layers_section(report)]
    return "\n".join(part for part in parts if part)


def _scripts() -> str:
    from plotly.offline import get_plotlyjs

    app = resources.files("gradprobe.reports").joinpath("report_app.js").read_text(encoding="utf-8")
    return f"<script>{get_plotlyjs()}</script>\n<script>{app}</script>"


def render_html(reports: Report | Sequence[Report], stages: Stages | None = None) -> str:
    """One run's report, or several runs overlaid on the same charts, as one HTML document that
    needs no network access."""
    reports = [reports] if isinstance(reports, Report) else list(reports)
    stages = stages or quiet_stages()
    title = "gradprobe report: " + ", ".join(report.name for report in reports)
    parts = [f"<h1>{escape(title)}</h1>", CONTROLS]
    if len(reports) == 1:
        parts.append(_run_sections(reports[0], stages))
    else:
        parts += [f"<details open><summary>{escape(report.name)}</summary>\n{_run_sections(report, stages)}</details>"
                  for report in reports]
    data = _script_json(chart_data(reports))
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
            f'<body>\n{body}\n<script type="application/json" id="gp-data">{data}</script>\n'
            f"{_scripts()}\n</body></html>\n")
