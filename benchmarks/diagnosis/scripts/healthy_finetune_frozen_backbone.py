"""Healthy: fine-tuning with a frozen backbone (requires_grad=False), only the head in the optimizer."""
import torch
from _data import batches, classes
from torch import nn

torch.manual_seed(0)
x, y = classes()
backbone = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
head = nn.Linear(64, 4)
for p in backbone.parameters():
    p.requires_grad_(False)
model = nn.Sequential(backbone, head)
opt = torch.optim.SGD(head.parameters(), lr=0.05, momentum=0.9)
for i, xb, yb in batches(x, y, 32, 200):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(xb), yb)
    loss.backward()
    opt.step()
print(f"final loss {loss.item():.3f}")
