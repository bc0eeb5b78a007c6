"""Healthy: a deep residual MLP with BatchNorm (8 blocks) and Adam."""
import torch
from _data import batches, classes
from torch import nn


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc, self.bn = nn.Linear(width, width), nn.BatchNorm1d(width)

    def forward(self, h):
        return h + torch.relu(self.bn(self.fc(h)))


torch.manual_seed(0)
x, y = classes()
model = nn.Sequential(nn.Linear(16, 32), *[Block(32) for _ in range(8)], nn.Linear(32, 4))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for i, xb, yb in batches(x, y, 64, 150):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(xb), yb)
    loss.backward()
    opt.step()
print(f"final loss {loss.item():.3f}")
