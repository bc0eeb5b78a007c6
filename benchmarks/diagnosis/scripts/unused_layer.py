"""Pathology: a layer defined and optimised but never used in forward."""
import torch
from _data import batches, classes
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.aux, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))  # self.aux forgotten


torch.manual_seed(0)
x, y = classes()
model = Net()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for i, xb, yb in batches(x, y, 64, 100):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(xb), yb)
    loss.backward()
    opt.step()
