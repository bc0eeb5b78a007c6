"""Pathology: a shared trunk with two heads whose losses differ by 1e5 in weight: the second head starves."""
import torch
from _data import batches, regression
from torch import nn


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.head_a, self.head_b = nn.Linear(32, 1), nn.Linear(32, 1)

    def forward(self, x):
        h = self.trunk(x)
        return self.head_a(h), self.head_b(h)


torch.manual_seed(0)
x, y = regression()
model = TwoHeads()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for i, xb, yb in batches(x, y, 32, 100):
    opt.zero_grad()
    a, b = model(xb)
    loss = nn.functional.mse_loss(a, yb) + 1e-5 * nn.functional.mse_loss(b, -yb)
    loss.backward()
    opt.step()
