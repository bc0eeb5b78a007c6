"""Healthy: a long run (1,500 steps) of SGD on a classifier whose gradient norms drift slowly down."""
import torch
from _data import batches, classes
from torch import nn

torch.manual_seed(0)
x, y = classes(n=2048, seed=1)
model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.02)
for i, xb, yb in batches(x, y, 64, 1500):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(xb), yb)
    loss.backward()
    opt.step()
print(f"final loss {loss.item():.3f}")
