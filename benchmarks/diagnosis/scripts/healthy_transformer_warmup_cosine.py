"""Healthy: a tiny transformer encoder with AdamW, linear warmup then cosine decay."""
import math

import torch
from _data import tokens
from torch import nn

torch.manual_seed(0)
stream = tokens()
vocab, seq, bs, steps, warmup = 32, 16, 16, 200, 20


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.pos = nn.Parameter(torch.zeros(seq, 32))
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.out = nn.Linear(32, vocab)

    def forward(self, x):
        mask = nn.Transformer.generate_square_subsequent_mask(seq)
        return self.out(self.encoder(self.embed(x) + self.pos, mask=mask, is_causal=True))


model = Tiny()
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
sched = torch.optim.lr_scheduler.LambdaLR(
    opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))))
for step in range(steps):
    starts = torch.randint(0, len(stream) - seq - 1, (bs,))
    xb = torch.stack([stream[s:s + seq] for s in starts])
    yb = torch.stack([stream[s + 1:s + seq + 1] for s in starts])
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(xb).reshape(-1, vocab), yb.reshape(-1))
    loss.backward()
    opt.step()
    sched.step()
print(f"final loss {loss.item():.3f}")
