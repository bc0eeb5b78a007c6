"""Pathology: a hidden layer whose ReLU units are all dead (bias initialised to -20): no gradient reaches it."""
import torch
from _data import batches, classes
from torch import nn

torch.manual_seed(0)
x, y = classes()
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
with torch.no_grad():
    model[2].bias.fill_(-20.0)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for i, xb, yb in batches(x, y, 64, 100):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(xb), yb)
    loss.backward()
    opt.step()
