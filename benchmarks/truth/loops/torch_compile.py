"""The loop of PyTorch's ``torch.compile`` tutorial: ``model = torch.compile(model)``, then an ordinary
Adam loop over the compiled module (forward and backward run the compiled graphs; synthetic data)."""

import torch
from torch import nn

torch.manual_seed(6)
model = torch.compile(nn.Sequential(nn.Linear(20, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1)))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
x = torch.randn(512, 20)
y = torch.sin(x[:, :1]) + 0.1 * torch.randn(512, 1)
for step in range(24):
    batch = slice(32 * (step % 16), 32 * (step % 16 + 1))
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.mse_loss(model(x[batch]), y[batch])
    loss.backward()
    optimizer.step()
