"""Two runs side by side (for example before and after clipping): summary numbers, findings, layers."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from gradprobe.analysis import KINDS
from gradprobe.reports.escape import markdown as md, terminal as escape
from gradprobe.reports.json_report import plain
from gradprobe.reports.markdown import table as md_table
from gradprobe.reports.summary import Report, clip_stats, global_norm_stats, layer_stats, loss_stats
from gradprobe.reports.terminal import SEVERITY_STYLE, fmt, stdout_console


class Share(float):
    """A fraction of steps: a number in JSON, a percentage in the terminal and Markdown."""


def clip_policy(report: Report, steps) -> str:
    """The clipping the run trained with: gradprobe's policy (``run --clip``), the script's own
    clipping (its median threshold as recorded), or none."""
    if report.run.meta.get("clip"):
        return str(report.run.meta["clip"])
    threshold = steps["clip_threshold"].to_numpy(dtype=np.float64)
    if np.isfinite(threshold).any():
        return f"script's own, threshold {fmt(float(np.nanmedian(threshold)))}"
    return "none"


def summary_rows(report: Report) -> dict[str, Any]:
    """The numbers compared, by label (per optimizer when the run has several); shares of steps
    are :class:`Share` values."""
    rows: dict[str, Any] = {}
    several = len(report.streams) > 1
    for stream in report.streams:
        prefix = f"optimizer {stream.optimizer}: " if several else ""
        stats = global_norm_stats(stream.steps)
        rows[prefix + "steps"] = stats["steps"]
        rows[prefix + "clip policy"] = clip_policy(report, stream.steps)
        for key in ("median", "p95", "max"):
            rows[f"{prefix}global norm {key}"] = stats[key]
        share = (lambda count: Share(count / stats["steps"])) if stats["steps"] else (lambda count: None)
        rows[prefix + "non-finite steps"] = stats["nonfinite_steps"]
        rows[prefix + "non-finite share"] = share(stats["nonfinite_steps"])
        rows[prefix + "skipped steps"] = stats["skipped_steps"]
        rows[prefix + "skipped share"] = share(stats["skipped_steps"])
        loss = loss_stats(stream.steps) or {}
        for key in ("first", "last", "min"):
            rows[f"{prefix}loss {key}"] = loss.get(key)
        clip = clip_stats(stream.steps) or {}
        fired = clip.get("clipped_fraction")
        rows[prefix + "recorded clipping fired"] = None if fired is None else Share(fired)
    for kind in KINDS:
        found = [f.severity for f in report.findings if f.kind == kind]
        rows[f"finding: {kind}"] = max(found, key=("info", "warning", "critical").index) if found else None
    return rows


def layer_rows(a: Report, b: Report) -> list[tuple[str, float, float]]:
    """Median gradient norm of every layer name both runs recorded, in the first run's order."""
    left = layer_stats(a.run).set_index("name")["median"]
    right = layer_stats(b.run).set_index("name")["median"]
    return [(str(name), float(left[name]), float(right[name])) for name in left.index if name in right.index]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, Share):
        return f"{value:.1%}"
    return fmt(value) if isinstance(value, float) else str(value)


def _ratio(a: float, b: float) -> str:
    return f"{b / a:.3g}x" if a and np.isfinite(a) and np.isfinite(b) else "-"


def render_compare_terminal(a: Report, b: Report, console: Console | None = None) -> None:
    """Print the comparison as two rich tables."""
    console = console or stdout_console()
    left, right = summary_rows(a), summary_rows(b)
    table = Table(title="run comparison", title_justify="left")
    for column, justify in (("", "left"), (escape(a.name), "right"), (escape(b.name), "right")):
        table.add_column(column, justify=justify, overflow="fold")
    for label in dict.fromkeys([*left, *right]):
        values = [left.get(label), right.get(label)]
        if label.startswith("finding:"):
            cells = [f"[{SEVERITY_STYLE[v]}]{v}[/]" if v else "[green]none[/]" for v in values]
        else:
            cells = [_cell(v) for v in values]
        table.add_row(escape(label), *cells)
    console.print(table)
    layers = layer_rows(a, b)
    if layers:
        detail = Table(title="median gradient norm per layer", title_justify="left")
        for column, justify in (("layer", "left"), (escape(a.name), "right"), (escape(b.name), "right"),
                                ("ratio", "right")):
            detail.add_column(column, justify=justify, overflow="fold")
        for name, x, y in layers:
            detail.add_row(escape(name), fmt(x), fmt(y), _ratio(x, y))
        console.print(detail)


def render_compare_markdown(a: Report, b: Report) -> str:
    """The comparison as Markdown tables."""
    left, right = summary_rows(a), summary_rows(b)
    rows = [[md(label), md(_cell(left.get(label))), md(_cell(right.get(label)))]
            for label in dict.fromkeys([*left, *right])]
    lines = [f"## gradprobe comparison: {md(a.name)} vs {md(b.name)}", "",
             *md_table(["", md(a.name), md(b.name)], rows, "lrr"), ""]
    layers = layer_rows(a, b)
    if layers:
        lines += ["### Median gradient norm per layer", "",
                  *md_table(["layer", md(a.name), md(b.name), "ratio"],
                            [[md(n), fmt(x), fmt(y), _ratio(x, y)] for n, x, y in layers], "lrrr"), ""]
    return "\n".join(lines)


def render_compare_json(a: Report, b: Report) -> str:
    """The comparison as JSON: each run's name, path, summary numbers and findings, then the
    per-layer medians (``[first run, second run]``)."""
    document = {
        "runs": [{"name": r.name, "path": str(r.run.path), "summary": summary_rows(r),
                  "findings": [f.to_dict() for f in r.findings]} for r in (a, b)],
        "layers": [{"name": n, "median": [x, y]} for n, x, y in layer_rows(a, b)],
    }
    return json.dumps(plain(document), indent=2, allow_nan=False) + "\n"
