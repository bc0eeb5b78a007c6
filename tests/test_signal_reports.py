"""The update-to-weight ratio and the gradient noise scale as the reports show them."""

from __future__ import annotations

import json

import numpy as np
from rich.console import Console

from tests.conftest import require

torch = require("torch")

import gradprobe  # noqa: E402
from gradprobe.analysis.noise_scale import noise_scale, summary  # noqa: E402
from gradprobe.reports.html import render_html  # noqa: E402
from gradprobe.reports.json_report import render_json  # noqa: E402
from gradprobe.reports.markdown import render_markdown  # noqa: E402
from gradprobe.reports.summary import build_report  # noqa: E402
from gradprobe.reports.terminal import render_report  # noqa: E402


def _accumulating_run(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1024, 8, generator=g), torch.randn(1024, 1, generator=g)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=True,
                                         generator=g)
    with gradprobe.watch(model, out=tmp_path, every=4) as recording:
        for i, (xb, yb) in enumerate(loader):
            (torch.nn.functional.mse_loss(model(xb), yb) / 2).backward()
            if i % 2:
                optimizer.step()
                optimizer.zero_grad()
    return recording.load()


def test_reports_show_the_ratio_per_layer_and_the_noise_scale(tmp_path):
    run = _accumulating_run(tmp_path)
    report = build_report(run)
    per_layer = run.updates.groupby("name", observed=True)["ratio"].median()
    latest = summary(noise_scale(run.noise, 0, run.batches))
    assert latest["batch"] == 16 and latest["unit"] == "samples"

    document = json.loads(render_json(report))
    (signals,) = document["signals"]
    assert list(signals["update_ratio"]["layers"]) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    shown = [signals["update_ratio"]["layers"][name] for name in per_layer.index]
    assert np.allclose(shown, per_layer.to_numpy(), rtol=1e-6)
    assert np.isclose(signals["update_ratio"]["median"], np.median(per_layer.to_numpy()), rtol=1e-6)
    assert signals["noise_scale"]["b_simple"] == latest["b_simple"]

    console = Console(record=True, width=200, color_system=None)
    render_report(report, console)
    text = console.export_text()
    assert "update/weight" in text and f"B_simple {latest['b_simple']:.4g} samples" in text
    assert latest["advice"][:40] in text
    html = render_html(report)
    assert "Update-to-weight ratio per layer" in html and "Gradient noise scale" in html
    markdown = render_markdown(report)
    from gradprobe.reports.terminal import fmt

    ratio_row = next(line for line in markdown.splitlines() if "| update/weight ratio |" in line)
    over_time = run.updates.groupby("step")["ratio"].median().to_numpy()  # median over layers, per step
    assert f"| {fmt(float(np.median(over_time)))} | {fmt(float(np.percentile(over_time, 95)))} | " \
           f"{fmt(float(over_time.max()))} |" in ratio_row
    assert f"median over layers {fmt(float(np.median(per_layer.to_numpy())))} per step" in markdown
    assert "| noise scale B_simple |" in markdown and f"B_simple {fmt(latest['b_simple'])} samples" in markdown

    from gradprobe.reports.chart_data import chart_data

    (stream,) = chart_data([report])["streams"]
    layers = stream["layers"]
    expected = run.updates.pivot(index="step", columns="name", values="ratio")
    assert layers["step"] == expected.index.tolist()  # a short run: one bin per sampled step
    for name, column in zip(layers["names"], layers["log_update_ratio"]):
        # log10 values kept to 3 significant digits: within 0.005 for ratios from 1e-10 to 0.1
        np.testing.assert_allclose(column, np.log10(expected[name].to_numpy(np.float64)), rtol=0, atol=5e-3)
    assert 'value="log_update_ratio"' in html
