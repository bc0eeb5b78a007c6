"""The gradient noise scale under DDP: one rank's and the all-reduced gradient, read from DDP's buckets,
against the norms the script computes itself; training stays bit-for-bit what it is without gradprobe."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import torch

import gradprobe
from gradprobe.analysis.noise_scale import run_noise_scale, summary
from conftest import run_cli

STEPS, BATCH = 7, 16

SCRIPT = f"""
import json, sys
import torch, torch.distributed as dist
from torch import nn

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1)))
if sys.argv[2:] == ["own-hook"]:
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import fp16_compress_hook
    model.register_comm_hook(None, fp16_compress_hook)
opt = torch.optim.SGD(model.parameters(), lr=0.05)
g = torch.Generator().manual_seed(1)
x = torch.randn(512, 8, generator=g)
data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True) + torch.randn(512, 1, generator=g))
sampler = torch.utils.data.distributed.DistributedSampler(data, shuffle=False)
loader = torch.utils.data.DataLoader(data, batch_size={BATCH}, sampler=sampler)


def squared(tensors):
    return float(sum(torch.linalg.vector_norm(t.double()) ** 2 for t in tensors))


seen = []
for step, (xb, yb) in zip(range({STEPS}), loader):
    opt.zero_grad()
    local = torch.autograd.grad(nn.functional.mse_loss(model.module(xb), yb), list(model.module.parameters()))
    nn.functional.mse_loss(model(xb), yb).backward()
    seen.append({{"local": squared(local), "reduced": squared([p.grad for p in model.parameters()])}})
    opt.step()
if rank == 0:
    print("comm hooks", len(model._comm_hooks))
    with open(sys.argv[1], "w") as f:
        json.dump({{"seen": seen, "params": [p.detach().double().flatten().tolist() for p in model.parameters()]}}, f)
"""


def _torchrun(tmp_path, script, out):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script), str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_ddp_rows_hold_one_ranks_and_the_reduced_gradient_and_training_is_unchanged(tmp_path, write_script):
    script = write_script(SCRIPT, "ddp_noise.py")
    result = run_cli("profile", "--nproc-per-node", "2", "--every", "2", "--out", "runs", str(script), "--",
                     str(tmp_path / "seen.json"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "comm hooks 1" in result.stdout
    (path,) = (tmp_path / "runs").iterdir()
    run = gradprobe.load_run(path)
    recorded = json.loads((tmp_path / "seen.json").read_text())
    seen = recorded["seen"]
    noise = run.noise.sort_values("step")
    assert noise["step"].tolist() == [2, 4, 6]  # sampled steps, from the second (the optimizer is known)
    assert (noise["micro_batches"] == 2).all() and (noise["rank"] == 0).all()
    assert noise["micro_sq"].to_numpy() == pytest.approx([seen[s]["local"] for s in (2, 4, 6)], rel=1e-5)
    assert noise["total_sq"].to_numpy() == pytest.approx([4 * seen[s]["reduced"] for s in (2, 4, 6)], rel=1e-5)

    frame = run_noise_scale(run, 0)
    assert (frame["micro_batch_size"] == BATCH).all()  # one rank's batch: b; the reduced gradient's: 2b
    small, big, b = noise["micro_sq"].to_numpy(np.float64), noise["total_sq"].to_numpy(np.float64) / 4, BATCH
    assert frame["g2"].to_numpy() == pytest.approx((2 * b * big - b * small) / b, rel=1e-6)
    assert frame["trace"].to_numpy() == pytest.approx((small - big) / (1 / b - 1 / (2 * b)), rel=1e-6)
    latest = summary(frame)
    assert (latest["step"], latest["unit"], latest["batch"]) == (6, "samples", 2 * BATCH)

    plain = _torchrun(tmp_path, script, tmp_path / "plain.json")
    assert plain.returncode == 0, plain.stderr
    assert json.loads((tmp_path / "plain.json").read_text())["params"] == recorded["params"]  # bit for bit


KNOWN_NOISE = """
import torch, torch.distributed as dist
from torch import nn

dist.init_process_group("gloo")
rank = dist.get_rank()
g = torch.Generator().manual_seed(3)
x = torch.randn(512, 5, generator=g)
y = x @ torch.ones(5) + 2.0 * torch.randn(512, generator=g)
model = nn.Linear(5, 1, bias=False)
with torch.no_grad():
    model.weight.fill_(0.5)
model = nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(model.parameters(), lr=0.0)  # fixed weights: every step sees the same gradient noise
sampler = torch.utils.data.RandomSampler(range(512), replacement=True, num_samples=16 * 300,
                                         generator=torch.Generator().manual_seed(10 + rank))
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, sampler=sampler)
for xb, yb in loader:
    opt.zero_grad()
    nn.functional.mse_loss(model(xb).reshape(-1), yb).backward()
    opt.step()
"""


@pytest.mark.slow
def test_ddp_estimates_recover_the_known_gradient_and_noise(tmp_path, write_script):
    """Each rank draws its 16-sample batches with replacement: the averaged unbiased estimates match
    |G|^2 and tr(S) of the per-sample gradients over the whole data set."""
    result = run_cli("profile", "--nproc-per-node", "2", "--every", "1", "--out", "runs",
                     str(write_script(KNOWN_NOISE, "known.py")), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (path,) = (tmp_path / "runs").iterdir()
    frame = run_noise_scale(gradprobe.load_run(path), 0)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(512, 5, generator=g)
    y = x @ torch.ones(5) + 2.0 * torch.randn(512, generator=g)
    grads = (2 * (x @ torch.full((5,), 0.5) - y)[:, None] * x).double()  # d/dw (x.w - y)^2 per sample
    mean = grads.mean(0)
    assert len(frame) == 299 and (frame["micro_batch_size"] == 16).all()
    assert frame["g2"].mean() == pytest.approx(mean.square().sum().item(), rel=0.15)
    assert frame["trace"].mean() == pytest.approx((grads - mean).square().sum(1).mean().item(), rel=0.15)


@pytest.mark.slow
@pytest.mark.parametrize("option, argument, hooks", [("--no-signals", "", 0), ("--signals", "own-hook", 1)])
def test_no_signals_or_the_scripts_own_comm_hook_leave_ddp_alone(tmp_path, write_script, option, argument, hooks):
    script = write_script(SCRIPT, "ddp_noise.py")
    result = run_cli("profile", option, "--nproc-per-node", "2", "--every", "2", "--out", "runs",
                     str(script), "--", str(tmp_path / "seen.json"), *filter(None, [argument]), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"comm hooks {hooks}" in result.stdout  # DDP's built-in all-reduce, or the script's fp16 hook
    (path,) = (tmp_path / "runs").iterdir()
    assert gradprobe.load_run(path).noise.empty
