"""Matplotlib figures of a report (Agg canvas, no pyplot: nothing global is changed).

Per optimizer: the global norm over time (with the recorded clip threshold,
the recommended thresholds and the findings marked on the time axis) beside
the loss; a layer-by-step heatmap of log10 norms; per-layer norm
distributions; and the gradient flow (median norm by depth). With two or more
layer groups, each group's norm over time; with per-task gradients, their norms
and cosines over time. With measured updates, each layer's update-to-weight
ratio over time; with gradient accumulation, the gradient noise scale.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from gradprobe.analysis import Finding, Stream, parse_groups
from gradprobe.analysis.groups import assign_groups
from gradprobe.analysis.imbalance import group_levels
from gradprobe.analysis.robust import bin_medians, log10_norms, quiet
from gradprobe.analysis.noise_scale import run_noise_scale
from gradprobe.analysis.task_conflict import task_cosines, task_norms
from gradprobe.analysis.update_ratio import ratios
from gradprobe.reports.escape import mpl
from gradprobe.reports.series import envelope
from gradprobe.reports.summary import Report, noise_stats, optimizer_label, update_ratio_stats

MAX_POINTS = 1500
MAX_HEATMAP_COLUMNS = 400
MAX_TICK_LABELS = 60
DPI = 90
WHOLE_RUN_FRACTION = 0.9
SEVERITY_COLOURS = {"critical": "#d62728", "warning": "#ff7f0e", "info": "#1f77b4"}
THRESHOLD_COLOURS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


@dataclass
class Plot:
    """One rendered figure: a title, a caption (plain text) and the matplotlib figure."""

    title: str
    caption: str
    figure: Figure

    def png(self) -> bytes:
        """The figure as PNG bytes."""
        buffer = io.BytesIO()
        FigureCanvasAgg(self.figure)
        self.figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
        return buffer.getvalue()


class PlainLogFormatter(LogFormatter):
    """Log-axis tick labels as plain numbers (0.2, 2, 100; 1e+05 far from 1) instead of 2×10⁰;
    which ticks get a label is still matplotlib's choice."""

    def __call__(self, x, pos=None):
        return f"{x:g}" if super().__call__(x, pos) else ""


def log_axis(ax, axis: str = "y") -> None:
    """Put ``axis`` of ``ax`` on a log scale with :class:`PlainLogFormatter` labels."""
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(PlainLogFormatter())
    target.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))


def _legend_below(ax, entries: int) -> None:
    """The legend under the axes, so it never covers a line."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.16), ncols=min(3, max(1, entries)),
              frameon=False)


def _new_figure(width: float, height: float, **kwargs) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained", **kwargs)
    FigureCanvasAgg(figure)
    return figure


def _plot_envelope(ax, steps: np.ndarray, values: np.ndarray, colour: str, label: str) -> None:
    start, low, mid, high = envelope(values, MAX_POINTS)
    x = steps[start] if len(steps) else start
    if len(start) < len(values):
        ax.fill_between(x, low, high, color=colour, alpha=0.25, linewidth=0, label=f"{label} (range per bin)")
        ax.plot(x, high, color=colour, alpha=0.5, linewidth=0.5)
    ax.plot(x, mid, color=colour, linewidth=1.0, label=label)


def _mark_findings(ax, findings: Sequence[Finding], first_step: int, last_step: int) -> None:
    """Spikes as lines at their steps, other findings as a span from their first step; findings
    about the whole run (dead layers, vanishing) have no place on the time axis and are left out."""
    whole = WHOLE_RUN_FRACTION * max(last_step - first_step, 1)
    for finding in findings:
        first, last = finding.steps
        colour = SEVERITY_COLOURS[finding.severity]
        if finding.kind == "spike":
            for step in finding.evidence.get("spike_steps") or [first]:
                ax.axvline(step, color=colour, linewidth=0.8, linestyle=":")
        elif last - first < whole:
            if last > first:
                ax.axvspan(first, last, color=colour, alpha=0.12, linewidth=0)
            ax.axvline(first, color=colour, linewidth=1.0, linestyle=":")
        else:
            continue
        ax.annotate(mpl(finding.kind), (first, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                    color=colour, rotation=90, va="top", ha="right")


def _norm_axes(ax, report: Report, stream: Stream, thresholds: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    steps = stream.steps["step"].to_numpy()
    norms = stream.steps["global_norm"].to_numpy(dtype=np.float64)
    positive = np.where(norms > 0, norms, np.nan)
    _plot_envelope(ax, steps, positive, "#1f77b4", "global norm (pre-clip)")
    bad = ~np.isfinite(norms)
    if bad.any():
        ax.plot(steps[bad], np.ones(bad.sum()), "x", color="#d62728", transform=ax.get_xaxis_transform(),
                markersize=4, label="non-finite step")
    recorded = stream.steps["clip_threshold"].to_numpy(dtype=np.float64)
    if np.isfinite(recorded).any():
        ax.plot(steps, recorded, color="black", linestyle="--", linewidth=1.0, label="recorded clip threshold")
    for (spec, (x, y)), colour in zip(thresholds.items(), THRESHOLD_COLOURS):
        start, _, mid, _ = envelope(y, MAX_POINTS)
        ax.plot(x[start], mid, color=colour, linestyle="-.", linewidth=1.0, label=mpl(spec))
    _mark_findings(ax, [f for f in report.findings if f.evidence.get("optimizer") == stream.optimizer],
                   stream.first_step, stream.last_step)
    if np.isfinite(positive).any():
        log_axis(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("gradient L2 norm")
    _legend_below(ax, len(ax.get_legend_handles_labels()[1]))
    ax.set_title(mpl(f"global gradient norm, {optimizer_label(report.run, stream.optimizer)}"), fontsize=10)


def _loss_axes(ax, stream: Stream) -> None:
    steps = stream.steps["step"].to_numpy()
    loss = stream.steps["loss"].to_numpy(dtype=np.float64)
    _plot_envelope(ax, steps, loss, "#ff7f0e", "loss")
    finite = loss[np.isfinite(loss)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 100:
        log_axis(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("loss", fontsize=10)


def norm_plot(report: Report, stream: Stream, thresholds: dict[str, tuple[np.ndarray, np.ndarray]]) -> Plot:
    """Global norm over time with thresholds and findings, and the loss beside it when recorded."""
    has_loss = bool(np.isfinite(stream.steps["loss"].to_numpy(dtype=np.float64)).any())
    figure = _new_figure(12 if has_loss else 9, 4)
    axes = figure.subplots(1, 2, width_ratios=(2, 1)) if has_loss else [figure.subplots()]
    _norm_axes(axes[0], report, stream, thresholds)
    if has_loss:
        _loss_axes(axes[1], stream)
    caption = ("Pre-clip global gradient norm at every step (line: median per bin, band: range per bin). "
               "Dashed: recorded clip threshold; dash-dotted: recommended thresholds replayed on these steps; "
               "dotted lines and shaded spans: findings located in time (red critical, orange warning, blue info).")
    return Plot("Global gradient norm over time", caption, figure)


def _layer_ticks(ax, names: Sequence[str], axis: str) -> None:
    positions = np.arange(len(names))
    every = max(1, -(-len(names) // MAX_TICK_LABELS))
    shown = positions[::every]
    labels = [mpl(names[i]) for i in shown]
    if axis == "y":
        ax.set_yticks(shown, labels, fontsize=7)
    else:
        ax.set_xticks(shown, labels, fontsize=7, rotation=90)


def _layer_height(count: int) -> float:
    return float(min(20.0, 1.5 + 0.15 * count))


def heatmap_plot(stream: Stream) -> Plot:
    """Layers (input at the top) by sampled steps, coloured by log10 gradient norm."""
    logs = log10_norms(stream.matrix("norm"))
    starts, binned = bin_medians(logs, MAX_HEATMAP_COLUMNS)
    figure = _new_figure(10, _layer_height(len(stream.names)))
    ax = figure.subplots()
    sampled = stream.sampled
    extent = (sampled[0], sampled[-1] + 1, len(stream.names) - 0.5, -0.5) if len(sampled) else None
    image = ax.imshow(np.asarray(binned).T if len(starts) else np.zeros((len(stream.names), 0)),
                      aspect="auto", interpolation="nearest", extent=extent,
                      cmap=colormaps["viridis"].with_extremes(bad="#dddddd"))
    figure.colorbar(image, ax=ax, label="log10 gradient L2 norm", shrink=min(1.0, 6.0 / figure.get_figheight()))
    _layer_ticks(ax, stream.names, "y")
    ax.set_xlabel("step")
    return Plot("Layer-by-step heatmap of log10 gradient norms",
                "Rows: layers in depth order (input at the top); columns: sampled steps (median per bin); "
                "grey: no gradient or zero/non-finite norm.", figure)


def distribution_plot(stream: Stream) -> Plot:
    """A box per layer: 5th/25th/50th/75th/95th percentiles of its gradient norm over the run."""
    norms = stream.matrix("norm")
    norms = np.where(np.isfinite(norms) & (norms > 0), norms, np.nan)
    p5, p25, p50, p75, p95 = quiet(np.nanpercentile, norms, [5, 25, 50, 75, 95], axis=0)
    stats = [{"whislo": a, "q1": b, "med": c, "q3": d, "whishi": e, "label": mpl(name)}
             for a, b, c, d, e, name in zip(p5, p25, p50, p75, p95, stream.names)]
    keep = [s for s in stats if np.isfinite(s["med"])]
    figure = _new_figure(9, _layer_height(len(stream.names)))
    ax = figure.subplots()
    if keep:
        ax.bxp(keep, orientation="horizontal", showfliers=False, patch_artist=False)
        log_axis(ax, "x")
        ax.invert_yaxis()
        if len(keep) > MAX_TICK_LABELS:
            every = -(-len(keep) // MAX_TICK_LABELS)
            ax.set_yticks(np.arange(1, len(keep) + 1)[::every], [s["label"] for s in keep][::every], fontsize=7)
        else:
            ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("gradient L2 norm (whiskers: 5th-95th percentile)")
    return Plot("Per-layer gradient norm distributions",
                "One box per layer with a gradient (input at the top): quartiles and 5th-95th percentiles "
                "over the sampled steps.", figure)


def flow_plot(stream: Stream) -> Plot:
    """Median gradient norm (and its 10th-90th percentile band) by layer depth."""
    norms = stream.matrix("norm")
    norms = np.where(np.isfinite(norms) & (norms > 0), norms, np.nan)
    p10, p50, p90 = quiet(np.nanpercentile, norms, [10, 50, 90], axis=0)
    depth = np.arange(len(stream.names))
    figure = _new_figure(10, 4)
    ax = figure.subplots()
    ax.fill_between(depth, p10, p90, color="#1f77b4", alpha=0.2, linewidth=0, label="10th-90th percentile")
    vector = stream.is_vector
    # weights and biases/vectors as two lines: biases sit far below their weights, and one line
    # through both would zig-zag at every layer
    ax.plot(depth[~vector], p50[~vector], "o-", color="#1f77b4", linewidth=1.0, markersize=4, label="median, weights")
    ax.plot(depth[vector], p50[vector], "o--", mfc="none", color="#ff7f0e", linewidth=0.8, markersize=4,
            label="median, biases/vectors")
    if np.isfinite(p50).any():
        log_axis(ax)
    _layer_ticks(ax, stream.names, "x")
    ax.set_ylabel("gradient L2 norm")
    ax.set_xlabel("layer (input to output)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return Plot("Gradient flow: median norm by depth",
                "Median gradient norm of each layer over the sampled steps, from input (left) to output "
                "(right); a steady fall towards the input is vanishing gradient flow.", figure)


def group_plot(stream: Stream, groups: Sequence[str] = ()) -> Plot | None:
    """Each layer group's gradient L2 norm and per-parameter RMS at the sampled steps (None for < 2 groups)."""
    labels = assign_groups(stream.names, list(stream.table["group"]), parse_groups(groups) if groups else None)
    names, rms, norm = group_levels(stream, labels)
    if len(names) < 2:
        return None
    figure = _new_figure(12, 4)
    axes = figure.subplots(1, 2)
    for k, name in enumerate(names):
        for ax, values in zip(axes, (norm, rms)):
            ax.plot(stream.sampled, 10 ** values[:, k], linewidth=1.0, label=mpl(name))
    for ax, label in zip(axes, ("group gradient L2 norm", "per-parameter RMS (norm / sqrt(numel))")):
        log_axis(ax)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        _legend_below(ax, len(names))
    return Plot("Layer groups over time",
                "Gradient of each layer group (the --group patterns, or the top-level modules) at the sampled "
                "steps: L2 norm (left) and per-parameter RMS (right), which the imbalance check compares.",
                figure)


def task_plot(tasks: pd.DataFrame) -> Plot:
    """Per-task gradient norms on the shared parameters and the pairwise cosines over the sampled steps."""
    figure = _new_figure(12, 4)
    left, right = figure.subplots(1, 2)
    for name, series in task_norms(tasks).items():
        left.plot(series.index, series.to_numpy(np.float64), linewidth=1.0, marker=".", label=mpl(name))
    for pair, series in task_cosines(tasks).items():
        right.plot(series.index, series.to_numpy(np.float64), linewidth=1.0, marker=".", label=mpl(pair))
    right.axhline(0, color="black", linewidth=0.6)
    right.set_ylim(-1.05, 1.05)
    log_axis(left)
    left.set_ylabel("task gradient L2 norm")
    right.set_ylabel("cosine similarity")
    for ax in (left, right):
        ax.set_xlabel("step")
        _legend_below(ax, len(ax.get_legend_handles_labels()[1]))
    return Plot("Task gradients on the shared parameters",
                "Each task's gradient on the shared parameters (gradprobe.task_gradients): L2 norm (left) and "
                "cosine similarity of each pair (right; below 0 the tasks pull the shared weights apart).",
                figure)


MAX_RATIO_LINES = 12


def update_ratio_plot(stream: Stream) -> Plot | None:
    """Update-to-weight ratio of each layer at the sampled steps (the largest ones when there are
    many), against the ~1e-3 rule of thumb; None without measured updates."""
    grid, stats = ratios(stream), update_ratio_stats(stream)
    if grid is None or stats is None:
        return None
    figure = _new_figure(12, 4)
    ax = figure.subplots()
    order = np.argsort(-np.nan_to_num(stats["layers"], nan=-np.inf))[:MAX_RATIO_LINES]
    for j in order:
        ax.plot(stream.sampled, grid[:, j], linewidth=1.0, label=mpl(stream.names[j]))
    ax.axhline(stats["rule_of_thumb"], color="black", linestyle="--", linewidth=0.8, label="rule of thumb 1e-3")
    if np.isfinite(grid).any() and np.nanmax(grid) > 0:
        log_axis(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("|update| / |weight|")
    _legend_below(ax, len(order) + 1)
    return Plot("Update-to-weight ratio per layer",
                f"How far each optimizer step moved each layer, relative to its norm, at the sampled steps "
                f"(the {len(order)} largest layers by median); about 1e-3 is the usual healthy level.", figure)


def noise_plot(report: Report, stream: Stream) -> Plot | None:
    """The gradient noise scale B_simple over the accumulating steps, beside the batch size."""
    stats = noise_stats(report.run, stream)
    if stats is None:
        return None
    frame = run_noise_scale(report.run, stream.optimizer)
    figure = _new_figure(12, 4)
    ax = figure.subplots()
    ax.plot(frame["step"], frame["b_simple"], linewidth=1.0, label="B_simple (EMA)")
    ax.axhline(stats["batch"], color="black", linestyle="--", linewidth=0.8, label="batch size")
    log_axis(ax)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{stats['unit']}")
    _legend_below(ax, 2)
    return Plot("Gradient noise scale",
                f"B_simple = tr(cov) / |G|^2 from the micro-batch and accumulated gradients (McCandlish et al. "
                f"2018), an estimate of the critical batch size: {stats['advice']}.", figure)


def stream_plots(report: Report, stream: Stream,
                 thresholds: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> list[Plot]:
    """Every figure of one optimizer stream (per-layer figures only when layers were sampled)."""
    plots = [norm_plot(report, stream, thresholds or {})]
    if len(stream.sampled) and len(stream.names):
        plots += [heatmap_plot(stream), distribution_plot(stream), flow_plot(stream)]
    plots += [plot for plot in (update_ratio_plot(stream), noise_plot(report, stream)) if plot is not None]
    return plots
