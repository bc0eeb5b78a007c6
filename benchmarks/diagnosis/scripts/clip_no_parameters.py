"""Pathology: a clip helper given a parameter generator that the optimizer already consumed: clips nothing."""
import torch
from _data import batches, regression
from torch import nn

torch.manual_seed(0)
x, y = regression()
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
params = model.parameters()
opt = torch.optim.SGD(list(params), lr=0.01)
for i, xb, yb in batches(x, y, 32, 100):
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(xb), yb)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
