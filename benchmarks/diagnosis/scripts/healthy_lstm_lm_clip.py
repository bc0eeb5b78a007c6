"""Healthy: the classic word-language-model recipe, an LSTM with SGD lr=20 and clip_grad_norm_(..., 0.25),
which clips on nearly every step by design."""
import torch
from _data import tokens
from torch import nn

torch.manual_seed(0)
stream = tokens()
vocab, seq, bs = 32, 20, 16


class LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.lstm = nn.LSTM(32, 64, batch_first=True)
        self.out = nn.Linear(64, vocab)

    def forward(self, x):
        return self.out(self.lstm(self.embed(x))[0])


model = LM()
opt = torch.optim.SGD(model.parameters(), lr=20.0)
for step in range(150):
    starts = torch.randint(0, len(stream) - seq - 1, (bs,))
    xb = torch.stack([stream[s:s + seq] for s in starts])
    yb = torch.stack([stream[s + 1:s + seq + 1] for s in starts])
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(xb).reshape(-1, vocab), yb.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
    opt.step()
print(f"final loss {loss.item():.3f}")
