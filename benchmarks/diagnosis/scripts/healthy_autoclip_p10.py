"""Healthy: AutoClip at p=10 by hand (clip at the 10th percentile of the norms seen so far, the setting
gradprobe recommend proposes): it clips about 90% of the steps by design while the loss falls."""
import torch
from _data import batches, classes
from torch import nn

torch.manual_seed(0)
x, y = classes(n=8192)
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
seen = []
for i, xb, yb in batches(x, y, 64, 300):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(xb), yb)
    loss.backward()
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    seen.append(norm.item())
    torch.nn.utils.clip_grad_norm_(model.parameters(), torch.tensor(seen).quantile(0.10).item())
    opt.step()
