"""Pathology: NaN born in the backward pass of the model: a "safe" square root, torch.where(h > 0, sqrt(h), 0),
loses its clamp at step 60; the forward pass and the loss stay finite, but sqrt's gradient at h <= 0 is NaN
(0 x NaN in the unselected branch) and reaches fc1."""
import torch
from _data import batches, regression
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 1)
        self.clamp = True

    def forward(self, x):
        h = self.fc1(x)
        root = torch.sqrt(h.clamp(min=1e-6)) if self.clamp else torch.sqrt(h)
        return self.fc2(torch.where(h > 0, root, torch.zeros_like(h)))


torch.manual_seed(0)
x, y = regression()
model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for i, xb, yb in batches(x, y, 32, 100):
    model.clamp = i < 60
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(xb), yb)
    loss.backward()
    opt.step()
