"""Detectors and recommendations on real (tiny) PyTorch trainings recorded with ``gradprobe.watch``."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from gradprobe.analysis import diagnose, recommend, split_streams
from gradprobe.policies import parse_spec, replay_run
from test_analysis_support import record

REPO = Path(__file__).resolve().parents[1]


def regression_data(n: int = 256, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, x @ torch.randn(d, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)


X, Y = regression_data()


def batch(i: int, size: int = 32):
    idx = torch.arange(i * size, (i + 1) * size) % len(X)
    return X[idx], Y[idx]


def fit(model, optimizer, steps: int, make_batch=batch, after_backward=None, scheduler=None):
    def train():
        for i in range(steps):
            x, y = make_batch(i)
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            if after_backward:
                after_backward(i)
            optimizer.step()
            if scheduler:
                scheduler.step()
    return train


def mlp(depth: int = 2, act=nn.ReLU, width: int = 32):
    layers = []
    for k in range(depth):
        layers += [nn.Linear(16 if k == 0 else width, width), act()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


def by_kind(findings):
    return {f.kind: f for f in findings}


def serious(findings):
    return [f.to_dict() for f in findings if f.severity != "info"]


@pytest.mark.slow
def test_quickstart_cnn_is_healthy(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("quickstart", REPO / "examples" / "quickstart.py")
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    monkeypatch.setattr(sys, "argv", ["quickstart.py", "--epochs", "2"])
    run = record(None, quickstart.main, tmp_path, "quickstart", every=1)
    assert len(run.steps) == 64
    assert serious(diagnose(run)) == []


def test_adam_mlp_is_healthy(tmp_path):
    torch.manual_seed(0)
    model = mlp()
    run = record(model, fit(model, torch.optim.Adam(model.parameters(), 1e-3), 300), tmp_path, "mlp")
    assert serious(diagnose(run)) == []


def test_learning_rate_ramp_explodes_after_the_stability_limit(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(16, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    ramp = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.03**i)
    run = record(model, fit(model, optimizer, 170, scheduler=ramp), tmp_path, "ramp")
    finding = by_kind(diagnose(run))["explosion"]
    # Gradient descent on this quadratic diverges once lr > 2 / lambda_max of the loss Hessian.
    hessian = 2 * torch.cat([X, torch.ones(len(X), 1)], 1).T @ torch.cat([X, torch.ones(len(X), 1)], 1) / len(X)
    unstable_from = math.log(2 / torch.linalg.eigvalsh(hessian).max().item() / 0.01) / math.log(1.03)
    # Past the limit the top mode grows by prod_j (2 x 1.03^j - 1): 10^3 after 16 steps, 10^7 after 25, so
    # the norm cannot stay in its early band longer than that (nor leave it before the limit).
    assert unstable_from <= finding.evidence["departure_step"] <= unstable_from + 25
    assert finding.steps == (finding.evidence["departure_step"], 169)
    assert finding.evidence["loss_improving"] is False and finding.evidence["loss_change"] > 1
    assert finding.evidence["global"] is True
    assert set(finding.layers) == {"weight", "bias"}
    norms = run.steps["global_norm"].to_numpy()
    assert norms[-1] > 100 * np.median(norms[:34])
    assert finding.severity == "critical"


def test_outlier_batch_is_a_spike(tmp_path):
    torch.manual_seed(0)
    model = mlp()

    def make_batch(i):
        x, y = batch(i)
        return (x * 300, y) if i == 120 else (x, y)

    run = record(model, fit(model, torch.optim.Adam(model.parameters(), 1e-3), 200, make_batch), tmp_path, "spike")
    findings = by_kind(diagnose(run))
    finding = findings["spike"]
    norms = run.steps["global_norm"].to_numpy(dtype=np.float64)
    assert finding.steps == (120, 120)
    assert finding.evidence["max_ratio"] == pytest.approx(norms[120] / np.median(norms[20:120]), rel=1e-4)
    assert finding.layers[0] == "0.weight"
    assert "explosion" not in findings


def test_nan_input_makes_the_loss_the_origin(tmp_path):
    torch.manual_seed(0)
    model = mlp()

    def make_batch(i):
        x, y = batch(i)
        if i >= 60:
            x = x.clone()
            x[0, 0] = float("nan")
        return x, y

    run = record(model, fit(model, torch.optim.Adam(model.parameters(), 1e-3), 80, make_batch), tmp_path, "nan")
    finding = by_kind(diagnose(run))["nonfinite"]
    assert finding.severity == "critical"
    assert finding.steps == (60, 79)
    assert finding.evidence["first_loss_nonfinite_step"] == 60
    assert "forward pass" in finding.advice


class SqrtAtZero(nn.Module):
    """Identity forward; from ``on`` it adds sqrt(0 * h), whose backward is inf * 0 = NaN."""

    def __init__(self):
        super().__init__()
        self.on = False

    def forward(self, h):
        return torch.relu(h) + (torch.sqrt(h * 0) if self.on else 0)


def test_nan_born_in_backward_points_at_its_layer(tmp_path):
    torch.manual_seed(0)
    act = SqrtAtZero()
    model = nn.Sequential(nn.Linear(16, 32), act, nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def switch(i):
        act.on = i >= 40

    def make_batch(i):
        switch(i)
        return batch(i)

    run = record(model, fit(model, optimizer, 45, make_batch), tmp_path, "midnan")
    finding = by_kind(diagnose(run))["nonfinite"]
    assert finding.evidence["first_step"] == 40
    assert finding.layers == ["0.bias", "0.weight"]
    assert finding.evidence["first_loss_nonfinite_step"] == 41  # the NaN update of step 40 reached the weights
    assert "0.bias" in finding.advice


def test_deep_sigmoid_network_vanishes(tmp_path):
    torch.manual_seed(0)
    model = mlp(depth=10, act=nn.Sigmoid)
    run = record(model, fit(model, torch.optim.SGD(model.parameters(), lr=0.01), 60), tmp_path, "vanish")
    finding = by_kind(diagnose(run))["vanishing"]
    table = run.layer_table.reset_index(drop=True)[["id", "numel"]]
    layers = run.layers.merge(table, left_on="layer", right_on="id")
    layers["log_rms"] = np.log10(layers["norm"] / np.sqrt(layers["numel"]))
    weights = [f"{2 * k}.weight" for k in range(11)]
    level = layers.groupby("name", observed=True)["log_rms"].median()[weights].to_numpy()
    expected = np.median(level[-3:]) - np.median(level[:3])
    assert expected > 4
    assert finding.evidence["attenuation_decades"] == pytest.approx(expected, abs=1e-3)
    assert finding.severity == "critical"
    assert "0.weight" in finding.layers and "20.weight" not in finding.layers


def test_unused_and_zeroed_layers_are_dead(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
            self.unused = nn.Linear(4, 4)
            self.gate = nn.Linear(16, 8)

        def forward(self, x):
            return self.body(x) + 0 * self.gate(x).sum(1, keepdim=True)

    torch.manual_seed(0)
    model = Net()
    run = record(model, fit(model, torch.optim.Adam(model.parameters(), 1e-3), 30), tmp_path, "dead")
    finding = by_kind(diagnose(run))["dead_layer"]
    assert sorted(finding.layers) == ["gate.bias", "gate.weight", "unused.bias", "unused.weight"]
    assert (finding.evidence["absent"], finding.evidence["all_zero"]) == (2, 2)


@pytest.mark.parametrize("max_norm, severity, clipped", [(1e-3, "critical", 1.0), (1e3, "warning", 0.0)])
def test_script_clipping_that_always_or_never_fires(tmp_path, max_norm, severity, clipped):
    torch.manual_seed(0)
    model = mlp()
    clip = lambda i: torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)  # noqa: E731
    train = fit(model, torch.optim.SGD(model.parameters(), lr=0.01), 40, after_backward=clip)
    run = record(model, train, tmp_path, "clip")
    finding = by_kind(diagnose(run))["clip_saturation"]
    assert finding.severity == severity
    assert finding.evidence["clipped_fraction"] == clipped
    assert finding.evidence["threshold_median"] == pytest.approx(max_norm)


@pytest.mark.filterwarnings("ignore:`parameters` is an empty generator")
def test_clip_helper_given_a_consumed_generator_clips_nothing(tmp_path):
    torch.manual_seed(0)
    model = mlp()
    params = model.parameters()
    optimizer = torch.optim.SGD(list(params), lr=0.01)  # consumes the generator
    clip = lambda i: torch.nn.utils.clip_grad_norm_(params, 0.5)  # noqa: E731
    run = record(model, fit(model, optimizer, 30, after_backward=clip), tmp_path, "empty")
    finding = by_kind(diagnose(run))["clip_saturation"]
    assert finding.severity == "critical"
    assert finding.evidence["empty_fraction"] == 1.0
    assert "generator" in finding.advice


class TwoBranches(nn.Module):
    """An image branch and a text branch whose features reach the head 1,000x attenuated."""

    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.text = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16))
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(torch.cat([self.image(x[:, :8]), self.text(x[:, 8:]) * 1e-3], 1))


def test_branch_imbalance(tmp_path):
    torch.manual_seed(0)
    model = TwoBranches()
    run = record(model, fit(model, torch.optim.Adam(model.parameters(), 1e-3), 40), tmp_path, "branches")
    finding = by_kind(diagnose(run))["imbalance"]
    assert finding.layers == ["text.0.weight", "text.0.bias", "text.2.weight", "text.2.bias"]
    custom = by_kind(diagnose(run, ["img=image.*", "txt=text.0.*"]))["imbalance"]
    assert custom.layers == ["text.0.weight", "text.0.bias"]
    assert "imbalance" not in by_kind(diagnose(run, ["a=image.*", "b=head.*"]))
    assert custom.evidence["rms:img"] > 100 * custom.evidence["rms:txt"]


def test_recommendations_replay_the_recorded_history(tmp_path):
    torch.manual_seed(0)
    model = mlp()

    def make_batch(i):
        x, y = batch(i)
        return (x * 20, y) if i % 50 == 25 else (x, y)

    run = record(model, fit(model, torch.optim.Adam(model.parameters(), 1e-3), 200, make_batch), tmp_path, "recs",
                 every=5)
    streams = split_streams(run)
    recs = {r.strategy: r for r in recommend(streams, diagnose(streams))}
    assert list(recs) == ["first-choice", "percentile", "autoclip", "zclip", "agc", "value", "layer"]
    norms = run.steps["global_norm"].to_numpy(dtype=np.float64)

    # The first choice: the 10th percentile of the norms before the first 10x jump over the rolling median.
    logs = np.log10(norms)
    center = pd.Series(logs).rolling(100, min_periods=20).median().shift(1).to_numpy()
    jump = int(np.flatnonzero(logs - center >= 1.0)[0])
    lead = float(f"{np.percentile(norms[:jump], 10):.3g}")
    assert recs["first-choice"].spec == f"global-norm:max={lead:g}"
    assert recs["first-choice"].to_dict()["clipped_fraction"] == pytest.approx(np.mean(norms > lead))

    threshold = float(f"{np.percentile(norms, 95):.3g}")
    assert recs["percentile"].spec == f"global-norm:max={threshold:g}"
    assert recs["percentile"].to_dict()["clipped_fraction"] == pytest.approx(np.mean(norms > threshold))
    scale = np.where(norms > threshold, threshold / (norms + 1e-6), 1.0)
    assert recs["percentile"].to_dict()["mean_scale"] == pytest.approx(scale.mean(), rel=1e-5)
    assert recs["percentile"].to_dict()["min_scale"] == pytest.approx(scale.min(), rel=1e-5)

    for strategy in ("autoclip", "zclip", "agc", "value", "layer"):
        reference = replay_run(parse_spec(recs[strategy].spec), run)
        assert recs[strategy].to_dict()["clipped_fraction"] == pytest.approx(reference.clipped_fraction), strategy

    layer_max = float(recs["layer"].spec.split("=")[1])
    per_step = run.layers.groupby("step")["norm"].max()
    assert recs["layer"].to_dict()["clipped_fraction"] == pytest.approx(np.mean(per_step > layer_max))
    listed = {row["layer"]: row["clipped_fraction"] for row in recs["layer"].per_layer}
    for name, fraction in listed.items():
        own = run.layers[run.layers["name"] == name]["norm"]
        assert fraction == pytest.approx(np.mean(own > layer_max))


@pytest.mark.parametrize("after_step", [True, False])
def test_clipping_after_the_step_is_found(tmp_path, after_step):
    torch.manual_seed(0)
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def train():
        for i in range(30):
            x, y = batch(i)
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            if not after_step:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            optimizer.step()
            if after_step:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)

    run = record(model, train, tmp_path, "order")
    found = by_kind(diagnose(run))
    recorded = np.isfinite(run.steps["clip_threshold"].to_numpy()).sum()
    if after_step:
        finding = found["clip_after_step"]
        assert (finding.severity, finding.layers, finding.steps) == ("warning", [], (0, 29))
        assert finding.evidence["calls_after_step"] == 30 and finding.evidence["calls_before_step"] == 0
        assert finding.evidence["max_norm"] == 0.05
        assert "between loss.backward() and optimizer.step()" in finding.advice
        assert recorded == 0 and "clip_saturation" not in found  # the useless clip is not taken for a cut
    else:
        assert "clip_after_step" not in found
        assert recorded == 30
