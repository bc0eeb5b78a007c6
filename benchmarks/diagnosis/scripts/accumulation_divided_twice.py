"""Pathology: gradient accumulation over 8 micro-batches that divides the loss by 8 twice (in the loss
function and again in the loop): under SGD the learning rate is in effect 8x smaller than the one set."""
import torch
from _data import regression
from torch import nn

ACCUMULATE = 8
torch.manual_seed(0)
x, y = regression()
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)


def compute_loss(xb, yb):
    return nn.functional.mse_loss(model(xb), yb) / ACCUMULATE


for step in range(60):
    opt.zero_grad()
    for micro in range(ACCUMULATE):
        i = (step * ACCUMULATE + micro) % 32
        loss = compute_loss(x[i * 16:(i + 1) * 16], y[i * 16:(i + 1) * 16]) / ACCUMULATE
        loss.backward()
    opt.step()
