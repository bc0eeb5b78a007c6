"""Linear regression with heavy-tailed label noise (Student t, 1.5 degrees of freedom).

SGD 0.02 with momentum, 500 steps; prints the validation MSE against the clean targets."""

import torch

w = torch.randn(16, 1)
x_val = torch.randn(2048, 16)
y_val = x_val @ w
model = torch.nn.Linear(16, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
noise = torch.distributions.StudentT(1.5)
for step in range(500):
    x = torch.randn(32, 16)
    y = x @ w + 0.5 * noise.sample((32, 1))
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
with torch.no_grad():
    print(f"val_metric={torch.nn.functional.mse_loss(model(x_val), y_val).item():.6g}")
