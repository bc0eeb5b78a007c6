"""Pathology: one corrupted batch (inputs x100 at step 120) makes a gradient spike; training recovers."""
import torch
from _data import batches, regression
from torch import nn

torch.manual_seed(0)
x, y = regression()
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for i, xb, yb in batches(x, y, 32, 250):
    if i == 120:
        xb = xb * 100
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(xb), yb)
    loss.backward()
    opt.step()
