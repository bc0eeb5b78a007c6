"""The static figures (Markdown, notebooks, the PNGs of the HTML report): readable log ticks, a legend
beside the lines rather than over them, and a gradient-flow plot that does not zig-zag."""

from __future__ import annotations

import numpy as np

import gradprobe
from gradprobe.reports.figures import flow_plot, norm_plot
from gradprobe.reports.summary import build_report
from test_analysis_support import noisy, write_run


def _labels(ax, axis: str = "y") -> list[str]:
    ax.figure.canvas.draw()
    ticks = ax.get_yticklabels(minor=True) + ax.get_yticklabels() if axis == "y" else \
        ax.get_xticklabels(minor=True) + ax.get_xticklabels()
    return [t.get_text() for t in ticks if t.get_text()]


def test_log_ticks_read_as_plain_numbers_and_the_legend_is_off_the_line(tmp_path):
    norms = 1.0 + 1.5 * np.abs(np.sin(np.arange(200) / 9.0))  # within one decade: 1 to 2.5
    write_run(tmp_path, "run", norms, loss=np.linspace(3, 1, 200))
    report = build_report(gradprobe.load_run(tmp_path / "run"))
    plot = norm_plot(report, report.streams[0], {})
    ax = plot.figure.axes[0]
    labels = _labels(ax)
    assert ax.get_yscale() == "log" and labels
    assert not any("times" in label or "^" in label for label in labels), labels
    assert {"1", "2"} <= set(labels)
    plot.png()
    renderer = plot.figure.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.y1 <= ax.get_window_extent(renderer).y0  # below the axes, so over no line


def test_gradient_flow_draws_weights_and_biases_as_separate_lines(tmp_path):
    names = ["l0.weight", "l0.bias", "l1.weight", "l1.bias", "l2.weight"]
    levels = [1.0, 0.01, 0.5, 0.005, 0.25]
    layers = np.stack([noisy(100, level, 0.01, k) for k, level in enumerate(levels)], axis=1)
    write_run(tmp_path, "run", noisy(100), layers, names, shapes=[[4, 4], [4], [4, 4], [4], [4, 4]])
    (stream,) = build_report(gradprobe.load_run(tmp_path / "run")).streams
    ax = flow_plot(stream).figure.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    weights, biases = lines["median, weights"], lines["median, biases/vectors"]
    assert list(weights.get_xdata()) == [0, 2, 4] and list(biases.get_xdata()) == [1, 3]
    medians = np.median(layers, axis=0)
    assert np.allclose(weights.get_ydata(), medians[[0, 2, 4]]) and np.allclose(biases.get_ydata(), medians[[1, 3]])
    assert np.all(np.diff(weights.get_ydata()) < 0)  # a steady fall, no zig-zag through the biases
