"""Jupyter views of a run: ``Run._repr_html_`` (compact HTML summary) and ``Run.plot()`` (matplotlib figures)."""

from __future__ import annotations

import io
import math
from collections import OrderedDict
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import gradprobe

STEPS = 60
NAN_STEP = 40


class _Text(HTMLParser):
    """The text of an HTML fragment (table cells separated by `` | ``), checking that every tag it opens is closed."""

    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag != "br":
            self.open.append(tag)
        if tag == "td":
            self.parts.append(" | ")

    def handle_endtag(self, tag):
        assert self.open and self.open.pop() == tag, f"unbalanced </{tag}>"

    def handle_data(self, data):
        self.parts.append(data)


def _text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    parser.close()
    assert not parser.open, f"unclosed tags {parser.open}"
    return "".join(parser.parts)


def _train(out, name, first="hidden", nan_at=None):
    """SGD on a small MLP whose first layer is called ``first``; returns the run and the global
    gradient norm of every step, measured here."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(OrderedDict([(first, torch.nn.Linear(4, 8)), ("act", torch.nn.Tanh()),
                                             ("out", torch.nn.Linear(8, 1))]))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    norms = []
    with gradprobe.watch(model, out=out, name=name, every=5) as rec:
        for step in range(STEPS):
            opt.zero_grad()
            loss = model(torch.randn(16, 4)).pow(2).mean()
            if step == nan_at:
                loss = loss * math.nan
            loss.backward()
            norms.append(math.sqrt(sum(torch.linalg.vector_norm(p.grad).item() ** 2 for p in model.parameters())))
            opt.step()
    return gradprobe.load_run(rec.path), np.asarray(norms)


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("runs"), "healthy")


def test_summary_shows_status_norms_loss_and_no_findings(healthy):
    run, norms = healthy
    text = _text(run._repr_html_())
    assert f"gradprobe run healthy finished torch {torch.__version__}" in text
    assert (f"{STEPS} steps; global norm median {np.median(norms):.4g}, p95 {np.percentile(norms, 95):.4g}, "
            f"max {norms.max():.4g}; loss ") in text
    assert "non-finite" not in text and "clipping" not in text
    assert "findings | no problems found" in text
    assert any(ch in text for ch in "▁▂▃▄▅▆▇█")  # the sparkline


def test_summary_reports_non_finite_gradients_and_escapes_names(tmp_path):
    run, norms = _train(tmp_path, "broken", first="<img src=x>", nan_at=NAN_STEP)
    assert np.isnan(norms[NAN_STEP:]).all() and np.isfinite(norms[:NAN_STEP]).all()
    html = run._repr_html_()
    assert "<img" not in html and "&lt;img src=x&gt;." in html
    text = _text(html)
    assert f"critical | nonfinite at steps {NAN_STEP}-{STEPS - 1} in " in text
    assert f"non-finite {STEPS - NAN_STEP}, skipped 0" in text
    assert f"{STEPS} steps; global norm median {np.median(norms[:NAN_STEP]):.4g}" in text  # of the finite norms


def test_summary_of_a_run_without_steps(tmp_path):
    with gradprobe.watch(torch.nn.Linear(2, 1), out=tmp_path, name="empty") as rec:
        pass
    text = _text(gradprobe.load_run(rec.path)._repr_html_())
    assert "gradprobe run empty finished" in text and "nothing was recorded" in text
    # An empty run is never called healthy: the summary names the missing steps as a warning.
    assert "| warning | too_few_steps" in text and "No problems found" not in text


def test_plot_returns_the_report_figures_with_the_recorded_norms(healthy):
    run, norms = healthy
    figures = run.plot()
    assert len(figures) == 5 and all(isinstance(f, Figure) for f in figures)
    titles = [f.get_suptitle() for f in figures]
    assert titles[0] == "Global gradient norm over time" and "heatmap" in titles[1]
    # watch() measured the updates on sampled steps: SGD's update is lr times the gradient
    assert titles[4] == "Update-to-weight ratio per layer"
    ratio_lines = [line for line in figures[4].axes[0].get_lines() if not line.get_label().startswith("rule")]
    assert sorted(line.get_label() for line in ratio_lines) == sorted(run.layer_table["name"])
    for line in ratio_lines:
        np.testing.assert_array_equal(line.get_xdata(), np.arange(0, STEPS, 5))
        assert (np.asarray(line.get_ydata()) > 0).all()
    norm_line = next(line for line in figures[0].axes[0].get_lines() if line.get_label() == "global norm (pre-clip)")
    np.testing.assert_allclose(norm_line.get_xdata(), np.arange(STEPS))
    np.testing.assert_allclose(norm_line.get_ydata(), norms, rtol=1e-5)
    for figure in figures:
        figure.savefig(io.BytesIO(), format="png")  # every figure renders
