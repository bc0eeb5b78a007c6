"""The interactive HTML report opened in headless Chromium: it loads without errors or network
requests, draws the expected traces, and its controls change what is drawn."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import gradprobe
from conftest import in_ci
from gradprobe.reports.html import render_html
from gradprobe.reports.summary import build_report
from test_analysis_support import noisy, write_run

PROBE = Path(__file__).with_name("report_probe.js").read_text()
NAMES = ["enc.<script>alert(1)</script>", "enc.bias", "dec|pipe.weight", "dec.bias"]
GROUPS = ["enc", "enc", "dec", "dec"]
UPDATE_RATIO = 2e-3


def _chromium() -> str | None:
    return next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_chromium() is None and not in_ci(),
                                                   reason="no chromium binary (Debian package: chromium)")]


def clipped_run(root: Path, name: str, seed: int, threshold: float = 2.0, updates: bool = False) -> Path:
    """A run whose script clipped at ``threshold`` (so pre- and post-clip norms differ), with a spike,
    a non-finite step, a loss and four layers in two groups."""
    n = 400
    norms = noisy(n, 1.5, 0.2, seed)
    norms[150] *= 40
    norms[390] = np.inf
    post = np.minimum(norms, threshold)
    layers = np.stack([noisy(n, 0.5, 0.05, seed + k) for k in range(4)], axis=1) * (norms / 1.5)[:, None]
    writer = write_run(root, name, norms, np.nan_to_num(layers, posinf=1e30), NAMES, groups=GROUPS,
              shapes=[[4, 4], [4], [4, 4], [4]], every=2, loss=np.linspace(3, 1, n),
              clip_threshold=np.full(n, threshold), clip_scale=np.where(norms > threshold, threshold / norms, 1.0),
              global_norm_post=post, param_norms=np.full((n, 4), 10.0))
    if updates:  # the update of each sampled step and layer: UPDATE_RATIO of its weight norm (10)
        sampled = np.repeat(np.arange(0, n, 2), 4)
        writer.append("updates", {"step": sampled, "optimizer": np.zeros(len(sampled)), "rank": np.zeros(len(sampled)),
                                  "layer": np.tile(np.arange(4), n // 2), "update_norm": np.full(len(sampled), 10 * UPDATE_RATIO)})
    return root / name


def open_in_chromium(page: str, tmp_path: Path, query: str, group: str) -> dict:
    """Load ``page`` with the probe and return what the probe recorded."""
    setup = f"<script>window.PROBE_QUERY = {json.dumps(query)}; window.PROBE_GROUP = {json.dumps(group)};\n"
    path = tmp_path / "report.html"
    path.write_text(page.replace("<title>", setup + PROBE + "</script><title>", 1), encoding="utf-8")
    result = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,2000",
                             "--virtual-time-budget=15000", "--dump-dom", path.as_uri()],
                            capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert match, result.stderr[-2000:]
    return json.loads(html.unescape(match.group(1)))


def test_one_run_draws_and_reacts_to_its_controls(tmp_path):
    report = build_report(gradprobe.load_run(clipped_run(tmp_path, "clipped", 1)))
    probe = open_in_chromium(render_html(report), tmp_path, query="pipe", group="enc")
    assert "exception" not in probe, probe.get("exception")
    assert probe["errors"] == [] and probe["violations"] == [] and probe["resources"] == []
    replayed = sum(r.threshold_series(0) is not None for r in report.recommendations)
    # pre-clip, post-clip, recorded threshold, one line per replayed recommendation, non-finite marks
    first = probe["initial"]
    assert first["norm_traces"] == 3 + replayed + 1
    assert {"global norm (pre-clip)", "global norm (post-clip)", "global norm: recorded clip threshold"} <= set(
        first["norm_legend"])
    assert first["norm_axis"] == "log" and first["loss_lines"] == 1
    assert first["layer_lines"] == 4 and first["layer_legend"] == NAMES
    assert first["heatmap_rows"] == NAMES and first["heatmap_images"] == 1
    linear = probe["linear"]
    assert linear["norm_axis"] == "linear" and linear["norm_ticks"] != first["norm_ticks"]
    assert probe["searched"]["layer_lines"] == 1 and probe["searched"]["layer_legend"] == ["dec|pipe.weight"]
    assert probe["searched"]["heatmap_rows"] == ["dec|pipe.weight"]
    assert probe["grouped"]["layer_legend"] == NAMES[:2] and probe["grouped"]["heatmap_rows"] == NAMES[:2]
    assert probe["metrics"] == ["log_norm", "log_ratio"]  # no update was measured: no update metric offered


def test_the_layer_charts_switch_to_the_measured_update_to_weight_ratio(tmp_path):
    report = build_report(gradprobe.load_run(clipped_run(tmp_path, "updates", 1, updates=True)))
    probe = open_in_chromium(render_html(report), tmp_path, query="pipe", group="enc")
    assert probe["errors"] == [] and probe["violations"] == []
    assert probe["metrics"] == ["log_norm", "log_ratio", "log_update_ratio"]
    titles = [probe[f"metric_{m}"]["title"] for m in probe["metrics"]]
    assert titles == ["gradient L2 norm", "gradient norm / weight norm", "update norm / weight norm"]
    shown = probe["metric_log_update_ratio"]
    assert shown["layer_lines"] == 4 and shown["heatmap_rows"] == NAMES
    assert shown["first"] == pytest.approx([UPDATE_RATIO] * 3, rel=3e-3)  # log10 kept to 3 digits


def test_several_runs_are_overlaid(tmp_path):
    runs = [clipped_run(tmp_path, "seed-1", 1), clipped_run(tmp_path, "seed-2", 2, threshold=5.0)]
    reports = [build_report(gradprobe.load_run(run)) for run in runs]
    probe = open_in_chromium(render_html(reports), tmp_path, query="bias", group="dec")
    assert probe["errors"] == [] and probe["violations"] == [] and probe["resources"] == []
    legend = probe["initial"]["norm_legend"]
    for name in ("seed-1", "seed-2"):
        assert f"{name} (pre-clip)" in legend and f"{name} (post-clip)" in legend
    assert probe["initial"]["loss_lines"] == 2
    assert probe["searched"]["layer_legend"] == ["enc.bias", "dec.bias"]
