"""A healthy classifier: four Gaussian classes, an MLP, Adam 1e-3, 400 steps. Clipping has nothing
to fix here; prints the validation cross-entropy."""

import torch

centers = 2.0 * torch.randn(4, 10)


def batch(n):
    labels = torch.randint(0, 4, (n,))
    return centers[labels] + torch.randn(n, 10), labels


model = torch.nn.Sequential(torch.nn.Linear(10, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
x_val, y_val = batch(2048)
for step in range(400):
    x, y = batch(32)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
with torch.no_grad():
    print(f"val_metric={torch.nn.functional.cross_entropy(model(x_val), y_val).item():.6g}")
