"""Pathology: Adam at lr 1.0 on a small ReLU regression MLP. The loss rises about 70,000x in the first
steps, then settles back at its starting level (the net predicts about the mean) and learns nothing more;
the gradient norms, highest during the blow-up, keep falling, so no norm rises out of its band."""
import torch
from _data import batches, regression
from torch import nn

torch.manual_seed(0)
x, y = regression()
y = 5 * y + 3
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
opt = torch.optim.Adam(model.parameters(), lr=1.0)
for i, xb, yb in batches(x, y, 32, 300):
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(xb), yb)
    loss.backward()
    opt.step()
