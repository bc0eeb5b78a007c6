"""Healthy: an MLP regression with SGD and momentum, clipped at 5.0 as a rarely-needed guard."""
import torch
from _data import batches, regression
from torch import nn

torch.manual_seed(0)
x, y = regression()
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
for i, xb, yb in batches(x, y, 32, 200):
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(xb), yb)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
print(f"final loss {loss.item():.3f}")
