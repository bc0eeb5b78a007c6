"""The adding problem on a vanilla tanh RNN initialised with a large recurrent gain: gradients explode.

SGD 0.05, 400 steps, sequences of 40; prints the validation MSE."""

import torch


def batch(n):
    values = torch.rand(n, 40, 1)
    marks = torch.zeros(n, 40, 1)
    idx = torch.stack([torch.randint(0, 20, (n,)), torch.randint(20, 40, (n,))], 1)
    marks.scatter_(1, idx.unsqueeze(-1), 1.0)
    return torch.cat([values, marks], -1), (values * marks).sum(1)


rnn = torch.nn.RNN(2, 64, batch_first=True)
with torch.no_grad():
    rnn.weight_hh_l0.copy_(1.6 * torch.linalg.qr(torch.randn(64, 64))[0])
head = torch.nn.Linear(64, 1)
params = [*rnn.parameters(), *head.parameters()]
opt = torch.optim.SGD(params, lr=0.05)
x_val, y_val = batch(1024)
for step in range(400):
    x, y = batch(32)
    out, _ = rnn(x)
    loss = torch.nn.functional.mse_loss(head(out[:, -1]), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
with torch.no_grad():
    out, _ = rnn(x_val)
    print(f"val_metric={torch.nn.functional.mse_loss(head(out[:, -1]), y_val).item():.6g}")
