"""Pathology: a learning-rate schedule bug: a warm restart at step 150 sets the rate to 1.1x the stability
limit of full-batch least squares (16x the base rate): the top direction grows 1.2x per step from there."""
import torch
from _data import regression
from torch import nn

torch.manual_seed(0)
x, y = regression()
model = nn.Linear(16, 1)
a = torch.cat([x, torch.ones(len(x), 1)], 1)
lam = torch.linalg.eigvalsh(2 * a.T @ a / len(x)).max().item()
base = 0.05
opt = torch.optim.SGD(model.parameters(), lr=base)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.1 * 2 / lam / base if s >= 150 else 1.0)
for step in range(250):
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    sched.step()
