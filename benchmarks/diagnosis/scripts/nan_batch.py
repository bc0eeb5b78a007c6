"""Pathology: one batch of the data holds a NaN (batch 37); the loss is the first non-finite value."""
import torch
from _data import batches, regression
from torch import nn

torch.manual_seed(0)
x, y = regression(n=4096)
x[37 * 32 + 5, 3] = float("nan")  # a corrupt sample in batch 37
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for i, xb, yb in batches(x, y, 32, 80):
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(xb), yb)
    loss.backward()
    opt.step()
