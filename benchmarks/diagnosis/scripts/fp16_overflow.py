"""Pathology: a float16 model trained without a loss scaler; a batch of large inputs at step 80 overflows
the float16 gradients to Inf."""
import torch
from _data import batches, regression
from torch import nn

torch.manual_seed(0)
x, y = regression()
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1)).half()
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
for i, xb, yb in batches(x, y, 32, 120):
    if i == 80:
        xb = xb * 1000
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(xb.half()).float(), yb)
    loss.backward()
    opt.step()
