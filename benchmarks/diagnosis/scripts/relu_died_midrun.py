"""Pathology: ReLU units that die in the middle of training: a warmup bug applies lr=50 on step 60, the
update drives the first hidden layer's pre-activations negative: from step 61 no gradient reaches 0.*, and
2.weight, whose input is now all zero, gets a zero gradient (per-layer statistics are sampled every 10 steps,
so the death is seen at step 70)."""
import torch
from _data import batches, classes
from torch import nn

torch.manual_seed(0)
x, y = classes(n=4096)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for i, xb, yb in batches(x, y, 64, 150):
    opt.param_groups[0]["lr"] = 50.0 if i == 60 else 0.01
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(xb), yb)
    loss.backward()
    opt.step()
