"""Healthy: a small CNN with Adam on separable images; the loss falls steadily (late norm growth is normal)."""
import torch
from _data import batches, images
from torch import nn

torch.manual_seed(0)
x, y = images()
model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(8 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 4))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for i, xb, yb in batches(x, y, 32, 150):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(xb), yb)
    loss.backward()
    opt.step()
print(f"final loss {loss.item():.3f}")
