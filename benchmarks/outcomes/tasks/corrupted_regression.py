"""Regression whose batches are occasionally corrupted: 2% of batches have their targets scaled x300.

Adam 3e-3, 600 steps; prints the validation MSE on clean held-out data."""

import torch

teacher = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
for p in teacher.parameters():
    p.requires_grad_(False)
x_val = torch.randn(2048, 20)
y_val = teacher(x_val)
model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                            torch.nn.Linear(64, 1))
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
corrupted = set(torch.randperm(600)[:12].tolist())
for step in range(600):
    x = torch.randn(32, 20)
    y = teacher(x) + 0.05 * torch.randn(32, 1)
    if step in corrupted:
        y = y * 300.0
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
with torch.no_grad():
    print(f"val_metric={torch.nn.functional.mse_loss(model(x_val), y_val).item():.6g}")
