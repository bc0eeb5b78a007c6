"""Pathology: clip_grad_norm_ called after optimizer.step(): it clips gradients that were already used."""
import torch
from _data import batches, regression
from torch import nn

torch.manual_seed(0)
x, y = regression()
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for i, xb, yb in batches(x, y, 32, 100):
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(xb), yb)
    loss.backward()
    opt.step()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
