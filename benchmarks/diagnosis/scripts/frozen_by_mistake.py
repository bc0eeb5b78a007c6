"""Pathology: the encoder is meant to train but its forward runs under torch.no_grad() (left from an
evaluation helper): it never gets a gradient."""
import torch
from _data import batches, classes
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.head = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x):
        with torch.no_grad():
            h = torch.relu(self.encoder(x))
        return self.head(h)


torch.manual_seed(0)
x, y = classes()
model = Net()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for i, xb, yb in batches(x, y, 64, 100):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(xb), yb)
    loss.backward()
    opt.step()
