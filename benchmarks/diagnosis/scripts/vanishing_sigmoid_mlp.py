"""Pathology: a 10-layer sigmoid MLP with small init: gradients vanish towards the input."""
import torch
from _data import batches, classes
from torch import nn

torch.manual_seed(0)
x, y = classes()
layers = []
for k in range(10):
    layers += [nn.Linear(16 if k == 0 else 32, 32), nn.Sigmoid()]
model = nn.Sequential(*layers, nn.Linear(32, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for i, xb, yb in batches(x, y, 64, 100):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(xb), yb)
    loss.backward()
    opt.step()
