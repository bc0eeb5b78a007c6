"""Pathology: full-batch gradient descent on least squares with lr 3% above the stability limit 2/lambda_max:
the error grows by ~1.03x per step, slowly."""
import torch
from _data import regression
from torch import nn

torch.manual_seed(0)
x, y = regression()
model = nn.Linear(16, 1)
a = torch.cat([x, torch.ones(len(x), 1)], 1)
lam = torch.linalg.eigvalsh(2 * a.T @ a / len(x)).max().item()
opt = torch.optim.SGD(model.parameters(), lr=1.03 * 2 / lam)
for step in range(300):
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
