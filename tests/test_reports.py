"""Report renderers and the report / recommend / compare commands."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import gradprobe
from gradprobe.analysis.what_if_notes import REPLAY_CAVEAT
from gradprobe.reports.html import render_html
from gradprobe.reports.json_report import render_json
from gradprobe.reports.markdown import render_markdown
from gradprobe.reports.summary import build_report
from gradprobe.reports.terminal import render_report
from gradprobe.store import RunWriter
from conftest import run_cli
from test_analysis_support import noisy, write_run

NASTY = ["enc.<script>alert(1)</script>", "dec|pipe*star_[x](y)", "bias$x$&amp"]
KINDS = {"explosion", "vanishing", "spike", "nonfinite", "dead_layer", "clip_saturation", "imbalance"}


@pytest.fixture
def troubled(tmp_path) -> Path:
    """A run with a spike, an explosion into Inf, a dead layer and names that need escaping."""
    n = 300
    norms = noisy(n, spread=0.05)
    norms[100] *= 80
    norms[200:] *= 1.08 ** np.arange(1, 101)
    norms[290:] = np.inf
    layers = np.stack([noisy(n, 0.5, 0.05, 1), noisy(n, 0.5, 0.05, 2), np.full(n, np.nan)], axis=1)
    layers[:, :2] *= (norms / noisy(n, spread=0.05)).clip(max=1e30)[:, None]
    write_run(tmp_path, "troubled", norms, np.nan_to_num(layers, posinf=1e30), NASTY, shapes=[[4, 4], [4, 4], [4]],
              groups=["g", "g", "g"], every=2, loss=np.linspace(3, 1, n))
    return tmp_path / "troubled"


@pytest.fixture
def healthy(tmp_path) -> Path:
    layers = np.stack([noisy(200, 0.5, 0.1, s) for s in range(3)], axis=1)
    write_run(tmp_path, "healthy", noisy(200), layers, ["a.weight", "a.bias", "b.weight"], every=2)
    return tmp_path / "healthy"


def check_finding(item: dict) -> None:
    """The DESIGN.md finding schema, checked field by field."""
    assert set(item) == {"kind", "severity", "layers", "steps", "evidence", "advice"}
    assert item["kind"] in KINDS
    assert item["severity"] in {"info", "warning", "critical"}
    assert isinstance(item["layers"], list) and all(isinstance(x, str) for x in item["layers"])
    assert isinstance(item["steps"], list) and len(item["steps"]) == 2
    assert all(isinstance(s, int) for s in item["steps"]) and item["steps"][0] <= item["steps"][1]
    assert isinstance(item["evidence"], dict) and item["evidence"]
    for value in item["evidence"].values():
        values = value if isinstance(value, list) else [value]
        assert all(v is None or isinstance(v, (int, float)) for v in values), value
    assert isinstance(item["advice"], str) and item["advice"]


def check_recommendation(item: dict) -> None:
    assert {"spec", "rationale", "clipped_fraction", "mean_scale", "min_scale"} <= set(item)
    assert isinstance(item["spec"], str) and isinstance(item["rationale"], str)
    assert 0.0 <= item["clipped_fraction"] <= 1.0
    assert item["min_scale"] is None or 0.0 <= item["min_scale"] <= 1.0
    assert item["mean_scale"] is None or 0.0 <= item["mean_scale"] <= 1.0


def test_json_report_follows_the_design_schema(troubled):
    text = render_json(build_report(gradprobe.load_run(troubled)))
    document = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert set(document) == {"run", "findings", "recommendations", "what_if_notes", "tunes"}
    assert document["what_if_notes"][0] == REPLAY_CAVEAT and document["tunes"] == []  # no tune of this run
    assert document["run"] == json.loads((troubled / "run.json").read_text())
    for item in document["findings"]:
        check_finding(item)
    assert {"spike", "explosion", "nonfinite", "dead_layer"} <= {f["kind"] for f in document["findings"]}
    severities = [("info", "warning", "critical").index(f["severity"]) for f in document["findings"]]
    assert severities == sorted(severities, reverse=True)
    assert [r["strategy"] for r in document["recommendations"]][:4] == ["first-choice", "percentile", "autoclip",
                                                                        "zclip"]
    for item in document["recommendations"]:
        check_recommendation(item)


def test_terminal_report_puts_findings_first(troubled):
    console = Console(record=True, width=160, color_system=None)
    render_report(build_report(gradprobe.load_run(troubled)), console)
    text = console.export_text()
    assert text.index("findings (") < text.index("global norm") < text.index("clip recommendations")
    assert text.index("clip recommendations") < text.index("per-layer gradient L2 norms")
    assert "critical" in text and "▁" in text and "!" in text


def test_terminal_report_of_a_healthy_run(healthy):
    console = Console(record=True, width=160, color_system=None)
    render_report(build_report(gradprobe.load_run(healthy)), console)
    assert "No problems found." in console.export_text()


def _table_rows(markdown: str) -> list[list[str]]:
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [re.split(r"(?<!\\)\|", line.strip())[1:-1] for line in rows]


def test_markdown_escapes_names_and_keeps_tables_intact(troubled):
    text = render_markdown(build_report(gradprobe.load_run(troubled)))
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert r"dec\|pipe\*star\_\[x\](y)" in text
    widths = {len(row) for row in _table_rows(text)}
    assert widths <= {2, 5, 6}
    assert "### Findings" in text and "### Clip recommendations" in text


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.sources.append(attrs.get("src", ""))
        for key in ("src", "href"):
            if attrs.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(attrs[key])


def chart_data_of(page: str) -> dict:
    """The charts' data embedded in an HTML report."""
    return json.loads(re.search(r'<script type="application/json" id="gp-data">(.*?)</script>', page, re.S).group(1))


def test_html_is_self_contained_with_escaped_names(troubled):
    text = render_html(build_report(gradprobe.load_run(troubled)))
    parser = _Images()
    parser.feed(text)
    assert parser.external == []
    assert "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none';" in text
    assert text.count("<script") == text.count("</script>") == 3  # the data, Plotly, the report's code
    assert len(parser.sources) == 2  # distributions, gradient flow; the rest is drawn by the charts
    for source in parser.sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "bias$x$&amp;amp" in text
    assert text.count("<script>alert") == 0  # in the JSON too, < is written \\u003c
    (stream,) = chart_data_of(text)["streams"]
    assert stream["layers"]["names"] == NASTY
    assert len(stream["norm"]["mid"]) == 300 and "low" not in stream["norm"]  # short runs are not downsampled
    assert stream["nonfinite"]["step"] == list(range(290, 300))


def test_html_advice_shows_commands_as_code(troubled):
    report = build_report(gradprobe.load_run(troubled))
    text = render_html(report)
    commands = re.findall(r"`([^`]+)`", " ".join(f.advice for f in report.findings))
    assert commands
    for command in commands:
        assert f"<code>{html.escape(command)}</code>" in text
    assert "`" not in text.split("<h2>Findings</h2>")[1].split("</table>")[0]


def _chromium() -> str | None:
    return next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (Debian package: chromium)")
def test_every_html_figure_loads_in_headless_chromium(troubled, tmp_path):
    page = tmp_path / "report.html"
    probe = ("<script>window.addEventListener('load', () => { const imgs = [...document.images];"
             "document.body.setAttribute('data-figures', imgs.length + ':' +"
             " imgs.filter(i => i.complete && i.naturalWidth > 100 && i.naturalHeight > 100).length); });</script>")
    page.write_text(render_html(build_report(gradprobe.load_run(troubled))).replace("</body>", probe + "</body>"))
    result = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
         "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    match = re.search(r'data-figures="(\d+):(\d+)"', result.stdout)
    assert match, result.stderr[-2000:]
    assert match.group(1) == match.group(2) == "2"


@pytest.mark.slow
def test_cli_report_formats(troubled):
    root = troubled.parent
    json_out = run_cli("report", "troubled", "--root", str(root), "--format", "json", cwd=root)
    assert json_out.returncode == 0, json_out.stderr
    assert {f["kind"] for f in json.loads(json_out.stdout)["findings"]} >= {"spike", "nonfinite"}
    html_out = run_cli("report", str(troubled), "--format", "html", cwd=root)
    assert html_out.returncode == 0 and (troubled / "report.html").read_text().startswith("<!DOCTYPE html>")
    md_file = root / "report.md"
    md_out = run_cli("report", str(troubled), "-f", "markdown", "-o", str(md_file), cwd=root)
    assert md_out.returncode == 0 and md_out.stdout == ""
    assert md_file.read_text().startswith("## gradprobe report: troubled")
    terminal = run_cli("report", str(troubled), cwd=root)
    assert terminal.returncode == 0 and "findings (" in terminal.stdout
    assert "\x1b[" not in terminal.stderr  # no progress animation when stderr is not a terminal


def test_cli_report_defaults_to_the_latest_run(tmp_path):
    root = tmp_path / "gradprobe-runs"
    write_run(root, "older", noisy(50))
    write_run(root, "newer", noisy(50, seed=1))
    result = run_cli("report", "-f", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["run"]["start_time"] >= json.loads(
        (root / "older" / "run.json").read_text())["start_time"]
    assert "newer" in run_cli("report", cwd=tmp_path).stdout


@pytest.mark.parametrize("args, message", [
    (["--group", "oops"], "expected NAME=GLOB"),
    (["--group", "x=none*"], "matches no layer"),
    (["--format", "pdf"], "pdf"),
])
def test_cli_report_errors_are_short(healthy, args, message):
    result = run_cli("report", str(healthy), *args, cwd=healthy.parent)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_recommend_writes_recommendation_json(troubled):
    result = run_cli("recommend", str(troubled), "--strategy", "percentile", "--strategy", "zclip", "-p", "90",
                     cwd=troubled.parent)
    assert result.returncode == 0, result.stderr
    saved = json.loads((troubled / "recommendation.json").read_text())
    assert [r["strategy"] for r in saved["recommendations"]] == ["percentile", "zclip"]
    for item in saved["recommendations"]:
        check_recommendation(item)
    end = int(re.search(r"before the trouble at step (\d+)", saved["recommendations"][0]["rationale"]).group(1))
    # growth 1.08x per step from step 200 crosses the 3x band at step 214 (1.08^15 = 3.2); the norms'
    # noise (0.05 decades, 3 sigma = 1.41x = 1.08^4.5) moves the crossing by at most 5 steps
    assert 209 <= end <= 219
    run = gradprobe.load_run(troubled)
    norms = run.steps["global_norm"].to_numpy(dtype=np.float64)[:end]
    assert saved["recommendations"][0]["spec"] == f"global-norm:max={float(f'{np.percentile(norms, 90):.3g}'):g}"
    assert "global-norm:max=" in result.stdout
    as_json = run_cli("recommend", str(troubled), "-s", "layer", "--json", cwd=troubled.parent)
    assert json.loads(as_json.stdout)["recommendations"][0]["strategy"] == "layer"
    bad = run_cli("recommend", str(troubled), "-p", "0", cwd=troubled.parent)
    assert bad.returncode == 2 and "--percentile must be in (0, 100]" in bad.stderr


@pytest.mark.slow
def test_cli_compare_side_by_side(troubled, healthy):
    root = troubled.parent
    result = run_cli("compare", str(healthy), str(troubled), "-f", "json", cwd=root)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    first, second = document["runs"]
    assert (first["name"], second["name"]) == ("healthy", "troubled")
    assert first["summary"]["non-finite steps"] == 0 and second["summary"]["non-finite steps"] == 10
    assert first["summary"]["finding: explosion"] is None
    assert second["summary"]["finding: explosion"] == "critical"
    assert first["findings"] == []
    terminal = run_cli("compare", str(healthy), str(troubled), cwd=root)
    assert "run comparison" in terminal.stdout and "critical" in terminal.stdout
    markdown = run_cli("compare", str(healthy), str(troubled), "-f", "markdown", cwd=root)
    assert markdown.stdout.startswith("## gradprobe comparison: healthy vs troubled")


def test_a_run_with_too_few_or_no_steps_is_never_called_healthy(tmp_path):
    write_run(tmp_path, "bare", [1.0, 2.0, 3.0])
    (tmp_path / "empty").mkdir()
    RunWriter(tmp_path / "empty", {"status": "crashed", "start_time": 1.0, "layers": []})
    for name, recorded, steps in (("bare", 3, (0, 2)), ("empty", 0, (0, 0))):
        report = build_report(gradprobe.load_run(tmp_path / name))
        (finding,) = report.findings
        assert (finding.kind, finding.severity, finding.layers, finding.steps) == ("too_few_steps", "warning", [],
                                                                                  steps)
        assert finding.evidence["recorded_steps"] == recorded and finding.evidence["min_steps"] == 20
        assert "gradprobe profile" in finding.advice
        document = json.loads(render_json(report))
        assert [f["kind"] for f in document["findings"]] == ["too_few_steps"]
        assert "No problems found." not in render_markdown(report)
        assert "No problems found." not in render_html(report)
        console = Console(record=True, width=120, color_system=None)
        render_report(report, console)
        text = console.export_text()
        assert name in text and "No problems found." not in text and "too_few_steps" in text


def test_several_optimizers_are_reported_separately(tmp_path):
    writer = write_run(tmp_path, "gan", noisy(200), np.c_[noisy(200, 0.5)], ["G.w"])
    writer.update(layers=[{"id": i, "name": nm, "shape": [4, 4], "numel": 16, "dtype": "float32", "group": nm[0],
                           "optimizer": i} for i, nm in enumerate(["G.w", "D.w"])],
                  optimizers=[{"index": 0, "class": "Adam"}, {"index": 1, "class": "SGD"}])
    norms = noisy(200, seed=1)
    norms[150] *= 100
    write_run(tmp_path, "gan", norms, np.c_[norms], ["D.w"], optimizer=1, writer=writer, layer_offset=1)
    report = build_report(gradprobe.load_run(tmp_path / "gan"))
    assert [(f.kind, f.evidence["optimizer"]) for f in report.findings] == [("spike", 1)]
    assert {r.to_dict()["optimizer"] for r in report.recommendations} == {0, 1}
    page = render_html(report)
    assert [s["label"] for s in chart_data_of(page)["streams"]] == ["optimizer 0 (Adam)", "optimizer 1 (SGD)"]
    assert "<b>optimizer 1 (SGD): Gradient flow: median norm by depth.</b>" in page
    assert page.count("<img src=\"data:image/png;base64,") == 4  # the four figures; Plotly's bundle has the prefix too
    markdown = render_markdown(report)
    assert "optimizer 0 \\(Adam\\)" not in markdown and "optimizer 1 (SGD)" in markdown


@pytest.mark.slow
def test_cli_report_overlays_several_runs_and_the_trials_of_a_directory(tmp_path):
    tune = tmp_path / "tune"
    for seed in (0, 1):
        write_run(tune, f"trial-0{seed}-s{seed}", noisy(60, seed=seed), np.c_[noisy(60, 0.5, seed=seed)], ["a.w"])
    write_run(tmp_path, "other", noisy(60, seed=5))
    result = run_cli("report", "tune", "other", "--root", str(tmp_path), "-f", "html", "-o", "both.html",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = chart_data_of((tmp_path / "both.html").read_text())
    assert data["runs"] == ["trial-00-s0", "trial-01-s1", "other"]
    for stream, seed in zip(data["streams"], (0, 1, 5)):
        assert stream["norm"]["mid"] == pytest.approx(noisy(60, seed=seed), rel=1e-3)
    trials = run_cli("report", str(tune), "-f", "html", cwd=tmp_path)
    assert trials.returncode == 0 and "wrote" in trials.stderr
    assert chart_data_of((tune / "report.html").read_text())["runs"] == ["trial-00-s0", "trial-01-s1"]
    refused = run_cli("report", str(tune), "-f", "json", cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "2 runs go in one report with --format html only" in refused.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run_cli("report", str(empty), "-f", "html", cwd=tmp_path)
    assert nothing.returncode == 2 and "neither a run directory nor a directory of runs" in nothing.stderr


def test_compare_names_the_clip_policy_and_shows_shares_as_percentages(tmp_path, healthy):
    norms = noisy(200, 1.5, 0.3, seed=3)
    threshold = 1.6
    write_run(tmp_path, "clipped", norms, clip_threshold=np.full(200, threshold),
              clip_scale=np.minimum(1.0, threshold / norms), global_norm_post=np.minimum(norms, threshold))
    policy_run = write_run(tmp_path, "policy", noisy(200))
    policy_run.update(clip="zclip:z=2.5")
    from gradprobe.reports.compare import Share, render_compare_markdown, summary_rows

    reports = [build_report(gradprobe.load_run(path)) for path in (healthy, tmp_path / "clipped", tmp_path / "policy")]
    rows = [summary_rows(r) for r in reports]
    assert [r["clip policy"] for r in rows] == ["none", "script's own, threshold 1.6", "zclip:z=2.5"]
    fired = rows[1]["recorded clipping fired"]
    assert isinstance(fired, Share) and fired == pytest.approx(np.mean(norms > threshold))
    assert rows[0]["non-finite share"] == 0.0 and isinstance(rows[0]["non-finite share"], Share)
    text = render_compare_markdown(reports[0], reports[1])
    assert f"| recorded clipping fired | - | {np.mean(norms > threshold):.1%} |" in text
    assert "| non-finite share | 0.0% | 0.0% |" in text


def test_chart_data_downsamples_a_long_run_keeping_its_extremes(tmp_path):
    from gradprobe.reports.chart_data import MAX_BINS, chart_data

    n = 50_000
    norms = noisy(n, 1.0, 0.1, seed=4)
    norms[31_337] = 500.0
    write_run(tmp_path, "long", norms)
    (stream,) = chart_data([build_report(gradprobe.load_run(tmp_path / "long"), strategies=())])["streams"]
    size = -(-n // MAX_BINS)
    assert len(stream["step"]) == len(stream["norm"]["high"]) == -(-n // size) <= MAX_BINS
    assert stream["step"][:3] == [0, size, 2 * size]
    spike_bin = 31_337 // size
    assert stream["norm"]["high"][spike_bin] == 500.0
    full = n // size
    bins = norms[: full * size].reshape(full, size)
    assert stream["norm"]["low"][:full] == pytest.approx(bins.min(axis=1), rel=1e-3)
    assert stream["norm"]["mid"][:full] == pytest.approx(np.median(bins, axis=1), rel=1e-3)
