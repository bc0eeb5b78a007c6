"""Pathology: a ReLU RNN whose recurrent matrix has spectral radius ~1.6, trained on a curriculum that
lengthens the sequences from 5 to 45 steps: the gradient through time grows ~1.6x per added step."""
import torch
from torch import nn

torch.manual_seed(0)
rnn = nn.RNN(4, 32, batch_first=True, nonlinearity="relu")
with torch.no_grad():
    rnn.weight_hh_l0.copy_(torch.randn(32, 32) * 1.6 / 32**0.5)
head = nn.Linear(32, 1)
model = nn.ModuleDict({"rnn": rnn, "head": head})
opt = torch.optim.SGD(model.parameters(), lr=1e-10)
g = torch.Generator().manual_seed(1)
for step in range(240):
    length = 5 + step // 6
    xb = torch.randn(16, length, 4, generator=g)
    yb = xb[:, :, 0].sum(1, keepdim=True)
    opt.zero_grad()
    out, _ = rnn(xb)
    loss = nn.functional.mse_loss(head(out[:, -1]), yb)
    loss.backward()
    opt.step()
