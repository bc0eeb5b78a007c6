"""The loop of PyTorch's automatic mixed precision recipe ("Gradient accumulation" in the AMP examples):
``autocast`` (bfloat16 on the CPU), ``scaler.scale(loss / 4).backward()``, ``scaler.step`` and
``scaler.update`` every 4 micro-batches, SGD with momentum on a small CNN (synthetic images)."""

import torch
from torch import nn

torch.manual_seed(5)
ACCUMULATE = 4
model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 7 * 7, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
scaler = torch.amp.GradScaler("cpu")
data = [(torch.randn(16, 1, 16, 16), torch.randint(0, 10, (16,))) for _ in range(48)]
for i, (inputs, targets) in enumerate(data):
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(model(inputs), targets) / ACCUMULATE
    scaler.scale(loss).backward()
    if (i + 1) % ACCUMULATE == 0:
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
