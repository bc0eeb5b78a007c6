"""Markdown report, for pasting into an issue or a pull request (names escaped)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from gradprobe.reports.escape import markdown as md
from gradprobe.reports.sparkline import sparkline
from gradprobe.reports.summary import Report, clip_stats, global_norm_stats, layer_stats, loss_stats, optimizer_label
from gradprobe.reports.summary import noise_stats, task_stats, update_ratio_stats
from gradprobe.reports.terminal import fmt, layer_list, step_range

SPARK_WIDTH = 40


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> list[str]:
    """A Markdown table; ``align`` has one ``l``/``r`` per column (default left). Cells must be escaped."""
    marks = [("---:" if a == "r" else "---") for a in (align or "l" * len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _run_section(report: Report) -> list[str]:
    meta = report.run.meta
    framework = meta.get("framework") or {}
    rows = [
        ["status", md(meta.get("status"))],
        ["framework", md(f"{framework.get('name', '?')} {framework.get('version', '')}".strip())],
        ["script", md(meta.get("script"))],
        ["steps", md(", ".join(f"{len(s.steps)} ({optimizer_label(report.run, s.optimizer)})"
                               for s in report.streams))],
    ]
    if meta.get("error"):
        rows.append(["error", md(meta["error"])])
    rows += [["note", md(note)] for note in report.run.notes]
    return [f"## gradprobe report: {md(report.name)}", "", *table(["run", ""], rows), ""]


def _findings_section(report: Report) -> list[str]:
    counts = ", ".join(f"{n} {level}" for level, n in report.counts().items() if n)
    lines = [f"### Findings ({counts or 'none'})", ""]
    if not report.findings:
        return lines + ["No problems found.", ""]
    rows = [[f"**{f.severity}**" if f.severity != "info" else "info", f.kind, step_range(f.steps),
             md(layer_list(f.layers)), md(f.advice)] for f in report.findings]
    return lines + table(["severity", "kind", "steps", "layers", "advice"], rows) + [""]


def _norms_section(report: Report) -> list[str]:
    rows = []
    signals = {stream.optimizer: (update_ratio_stats(stream), noise_stats(report.run, stream))
               for stream in report.streams}
    for stream in report.streams:
        stats = global_norm_stats(stream.steps)
        rows.append([md(optimizer_label(report.run, stream.optimizer)), "global norm",
                     f"`{sparkline(stream.steps['global_norm'].to_numpy(), SPARK_WIDTH)}`",
                     fmt(stats["median"]), fmt(stats["p95"]), fmt(stats["max"])])
        loss = loss_stats(stream.steps)
        if loss:
            rows.append(["", "loss", f"`{sparkline(stream.steps['loss'].to_numpy(), SPARK_WIDTH, log=False)}`",
                         f"first {fmt(loss['first'])}", f"last {fmt(loss['last'])}", f"min {fmt(loss['min'])}"])
        for label, series in _signal_series(*signals[stream.optimizer]):
            rows.append(["", label, f"`{sparkline(series, SPARK_WIDTH)}`", fmt(float(np.nanmedian(series))),
                         fmt(float(np.nanpercentile(series, 95))), fmt(float(np.nanmax(series)))])
    lines = ["### Gradient norm over time", "",
             *table(["optimizer", "series", "over time (log)", "median", "p95", "max"], rows, "lllrrr"), ""]
    for stream in report.streams:
        clip = clip_stats(stream.steps)
        if clip:
            lines += [f"Recorded clipping ({md(optimizer_label(report.run, stream.optimizer))}) at "
                      f"{fmt(clip['threshold_median'])} fired on {clip['clipped_fraction']:.1%} of "
                      f"{clip['steps']} steps, mean scale {fmt(clip['mean_scale'])}.", ""]
        updates, scale = signals[stream.optimizer]
        if updates:
            lines += [f"Update/weight ratio ({md(optimizer_label(report.run, stream.optimizer))}): median over "
                      f"layers {fmt(updates['median'])} per step (rule of thumb ~{updates['rule_of_thumb']:g}).", ""]
        if scale:
            lines += [f"Gradient noise scale ({md(optimizer_label(report.run, stream.optimizer))}): B_simple "
                      f"{fmt(scale['b_simple'])} {md(scale['unit'])} at step {scale['step']} ({scale['steps']} "
                      f"measured steps): {md(scale['advice'])}", ""]
    return lines


def _signal_series(updates: dict | None, scale: dict | None) -> list[tuple[str, np.ndarray]]:
    """The update/weight ratio and noise scale over time, those that were measured."""
    series = [("update/weight ratio", updates and updates["over_time"]),
              ("noise scale B_simple", scale and scale["over_time"])]
    return [(label, np.asarray(values, dtype=np.float64)) for label, values in series
            if values is not None and np.isfinite(np.asarray(values, dtype=np.float64)).any()]


def _recommendations_section(report: Report) -> list[str]:
    if not report.recommendations:
        return []
    scores = [report.measured(rec) for rec in report.recommendations]
    measured = any(scores)
    rows = []
    for rec, score in zip(report.recommendations, scores):
        row = rec.to_dict()
        rows.append([f"`{row['spec']}`", f"{row['clipped_fraction']:.1%}", fmt(row["mean_scale"]),
                     fmt(row["min_scale"]), *([md(score or "-")] if measured else []), md(row["rationale"])])
    header = ["spec", "clipped", "mean scale", "min scale", *(["measured by tune"] if measured else []), "rationale"]
    return ["### Clip recommendations", "",
            *table(header, rows, "lrrr" + ("r" if measured else "") + "l"), "",
            *(f"- {md(note)}" for note in report.what_if_notes), ""]


def _tasks_section(report: Report) -> list[str]:
    rows = [[md(row["series"]), f"`{sparkline(row['values'], SPARK_WIDTH, log=row['negative'] is None)}`",
             fmt(row["median"]), fmt(row["max"]), "-" if row["negative"] is None else f"{row['negative']:.0%}"]
            for row in task_stats(report.tasks)]
    if not rows:
        return []
    return ["### Task gradients on the shared parameters", "",
            *table(["series", "over time", "median", "max", "negative"], rows, "llrrr"), ""]


def _layers_section(report: Report) -> list[str]:
    stats = layer_stats(report.run)
    rows = [[md(r["name"]), f"{r.numel:,}", fmt(r["median"]), fmt(r.p95), fmt(r["max"]), str(r.nonfinite)]
            for _, r in stats.iterrows()]
    return ["<details><summary>Per-layer gradient L2 norms (input to output)</summary>", "",
            *table(["layer", "numel", "median", "p95", "max", "non-finite"], rows, "lrrrrr"), "", "</details>", ""]


def render_markdown(report: Report) -> str:
    """The report as GitHub-flavoured Markdown."""
    sections = (_run_section, _findings_section, _norms_section, _tasks_section, _recommendations_section,
                _layers_section)
    return "\n".join(line for section in sections for line in section(report))
