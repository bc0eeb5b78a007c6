"""The loop of nanoGPT's train.py: a small causal transformer, AdamW with weight decay groups,
a cosine learning rate set by hand on every step, gradient accumulation over 4 micro-batches with
the loss divided by 4, ``set_to_none`` resets (synthetic tokens)."""

import math

import torch
from torch import nn

torch.manual_seed(0)
VOCAB, BLOCK, ACCUMULATE, STEPS = 64, 16, 4, 12


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        mask = torch.triu(torch.ones(x.shape[1], x.shape[1], dtype=torch.bool), 1)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, d), nn.Embedding(BLOCK, d)
        self.blocks = nn.ModuleList([Block(d), Block(d)])
        self.ln_f, self.lm_head = nn.LayerNorm(d), nn.Linear(d, VOCAB, bias=False)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return nn.functional.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))


model = GPT()
decay = [p for p in model.parameters() if p.dim() >= 2]
no_decay = [p for p in model.parameters() if p.dim() < 2]
optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                              lr=6e-4, betas=(0.9, 0.95))
data = torch.randint(0, VOCAB, (4096,))


def get_batch():
    ix = torch.randint(len(data) - BLOCK - 1, (8,))
    return torch.stack([data[i:i + BLOCK] for i in ix]), torch.stack([data[i + 1:i + 1 + BLOCK] for i in ix])


for it in range(STEPS):
    lr = 6e-5 + 0.5 * (6e-4 - 6e-5) * (1 + math.cos(math.pi * it / STEPS))
    for group in optimizer.param_groups:
        group["lr"] = lr
    for micro_step in range(ACCUMULATE):
        x, y = get_batch()
        loss = model(x, y) / ACCUMULATE
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
