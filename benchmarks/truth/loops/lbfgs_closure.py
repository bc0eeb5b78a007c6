"""The LBFGS loop of pytorch/examples time_sequence_prediction: ``optimizer.step(closure)`` where the
closure zeroes the gradients, runs forward and backward and returns the loss; LBFGS evaluates it
several times per step (a small LSTM on sine waves). gradprobe records the gradient of the closure's
first evaluation in each step and does not clip it (LBFGS updates with later gradients)."""

import torch
from torch import nn

torch.manual_seed(10)
t = torch.arange(64, dtype=torch.float32)
waves = torch.sin((t[None, :] + 8 * torch.randint(0, 10, (16, 1))) / 4.0)
inputs, targets = waves[:, :-1, None], waves[:, 1:, None]


class Sequence(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(1, 16, batch_first=True)
        self.linear = nn.Linear(16, 1)

    def forward(self, x):
        return self.linear(self.lstm(x)[0])


model = Sequence()
optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
for step in range(6):
    def closure():
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
