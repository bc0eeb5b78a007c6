"""Pathology: 1% of the training targets are corrupt (a sensor glitch: the label is 200x its value); the
batches that hold one spike the gradient, and the spike findings name their samples."""
import torch
from _data import regression
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
x, y = regression(n=2048)
corrupt = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))[:20]
y[corrupt] *= 200
train_loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(3):
    for xb, yb in train_loader:
        opt.zero_grad()
        nn.functional.mse_loss(model(xb), yb).backward()
        opt.step()
print("corrupt samples:", sorted(corrupt.tolist()))
