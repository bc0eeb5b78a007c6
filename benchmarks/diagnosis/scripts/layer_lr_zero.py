"""Pathology: a parameter group meant for a lower rate got lr=0 (a typo in a per-layer rate table): fc1
receives gradients and never moves."""
import torch
from _data import batches, classes
from torch import nn

torch.manual_seed(0)
x, y = classes()
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
opt = torch.optim.Adam([{"params": model[0].parameters(), "lr": 0.0},
                        {"params": model[2].parameters(), "lr": 1e-3}])
for i, xb, yb in batches(x, y, 64, 100):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(xb), yb)
    loss.backward()
    opt.step()
