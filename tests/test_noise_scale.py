"""Gradient noise scale: micro-batch norms recorded under accumulation, and the McCandlish estimates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import require

torch = require("torch")

import gradprobe  # noqa: E402
from gradprobe.analysis.noise_scale import batch_advice, noise_scale, summary  # noqa: E402

DIM, SAMPLES = 5, 512


def _regression(seed=0):
    """Linear regression with label noise: per-sample gradients are known in closed form."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SAMPLES, DIM, generator=g)
    y = x @ torch.ones(DIM) + 2.0 * torch.randn(SAMPLES, generator=g)
    return x, y


def _per_sample_grads(w, x, y):
    """d/dw (x.w - y)^2 for each sample."""
    return 2 * (x @ w - y)[:, None] * x


def test_recorded_micro_batch_norms_match_per_sample_gradients(tmp_path):
    x, y = _regression()
    model = torch.nn.Linear(DIM, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    accumulate, expected = 4, []
    with gradprobe.watch(model, out=tmp_path, every=2) as recording:
        micro = []
        for i, (xb, yb) in enumerate(loader):
            w = model.weight.detach().reshape(-1).clone()
            micro.append(_per_sample_grads(w, xb, yb).mean(0) / accumulate)
            (torch.nn.functional.mse_loss(model(xb).reshape(-1), yb) / accumulate).backward()
            if (i + 1) % accumulate == 0:
                optimizer.step()
                optimizer.zero_grad()
                expected.append((np.mean([m.square().sum().item() for m in micro]),
                                 torch.stack(micro).sum(0).square().sum().item()))
                micro = []
    noise = recording.load().noise
    # sampled steps only, from the second: micro-batch norms start once the optimizer is known
    measured = list(range(2, len(expected), 2))
    assert noise["step"].tolist() == measured
    assert (noise["micro_batches"] == accumulate).all()
    assert noise["micro_sq"].to_numpy() == pytest.approx([expected[s][0] for s in measured], rel=1e-4)
    assert noise["total_sq"].to_numpy() == pytest.approx([expected[s][1] for s in measured], rel=1e-4)
    frame = noise_scale(noise, 0, recording.load().batches)
    assert (frame["micro_batch_size"] == 8).all()


def test_estimates_recover_known_gradient_and_noise():
    """Micro-batch gradients drawn as G + noise of covariance S / b: the averaged unbiased estimates
    give |G|^2, tr(S) and B_simple = tr(S) / |G|^2."""
    rng = np.random.default_rng(0)
    dim, b, k, steps = 20, 8, 4, 4000
    G = rng.normal(size=dim) * 0.3
    scales = rng.uniform(0.5, 2.0, size=dim)  # S = diag(scales^2)
    micro = G + rng.normal(size=(steps, k, dim)) * scales / np.sqrt(b)
    noise = pd.DataFrame({"step": np.arange(steps), "optimizer": 0, "rank": 0, "micro_batches": k,
                          "micro_sq": (micro**2).sum(-1).mean(1), "total_sq": (micro.sum(1) ** 2).sum(-1)})
    batches = pd.DataFrame({"step": np.repeat(np.arange(steps), k), "optimizer": 0, "kind": "indices",
                            "count": b})
    frame = noise_scale(noise, 0, batches)
    true_g2, true_trace = float(G @ G), float((scales**2).sum())
    assert frame["g2"].mean() == pytest.approx(true_g2, rel=0.05)
    assert frame["trace"].mean() == pytest.approx(true_trace, rel=0.05)
    assert frame["b_simple"].iloc[-1] == pytest.approx(true_trace / true_g2, rel=0.25)  # EMA: ~40 steps' worth
    latest = summary(frame)
    assert latest["unit"] == "samples" and latest["batch"] == k * b


def test_end_to_end_noise_scale_of_linear_regression(tmp_path):
    """At fixed weights (lr 0), micro-batches sampled with replacement: the recorded run's averaged
    estimates match tr(S) and |G|^2 of the per-sample gradients over the whole data set."""
    x, y = _regression(3)
    model = torch.nn.Linear(DIM, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.full((1, DIM), 0.5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    sampler = torch.utils.data.RandomSampler(range(SAMPLES), replacement=True, num_samples=16 * 4 * 300,
                                             generator=torch.Generator().manual_seed(4))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, sampler=sampler)
    with gradprobe.watch(model, out=tmp_path, every=1) as recording:
        for i, (xb, yb) in enumerate(loader):
            torch.nn.functional.mse_loss(model(xb).reshape(-1), yb).backward()
            if (i + 1) % 4 == 0:
                optimizer.step()
                optimizer.zero_grad()
    grads = _per_sample_grads(torch.full((DIM,), 0.5), x, y).double()
    mean = grads.mean(0)
    true_g2 = mean.square().sum().item()
    true_trace = (grads - mean).square().sum(1).mean().item()
    run = recording.load()
    frame = noise_scale(run.noise, 0, run.batches)
    assert len(frame) == 299
    assert frame["g2"].mean() == pytest.approx(true_g2, rel=0.15)
    assert frame["trace"].mean() == pytest.approx(true_trace, rel=0.15)


def test_batch_advice_names_the_side_of_the_noise_scale():
    assert "below the noise scale" in batch_advice(1000.0, 32.0)
    assert "above the noise scale" in batch_advice(10.0, 512.0)
    assert "near the noise scale" in batch_advice(100.0, 128.0)
    assert "takes 1.8x the fewest possible steps" in batch_advice(100.0, 128.0)
