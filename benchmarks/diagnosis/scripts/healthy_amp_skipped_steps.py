"""Healthy: mixed precision with a GradScaler whose first steps overflow and are skipped (scale backs off)."""
import torch
from _data import batches, regression
from torch import nn

torch.manual_seed(0)
x, y = regression()
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20, growth_interval=50)
for i, xb, yb in batches(x, y, 32, 200):
    opt.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(xb)
    loss = nn.functional.mse_loss(out.float(), yb)
    # a float16 copy of the scaled loss gradient overflows until the scale has backed off
    scaler.scale(loss).backward()
    for p in model.parameters():
        p.grad = p.grad.half().float()
    scaler.step(opt)
    scaler.update()
print(f"final loss {loss.item():.3f} scale {scaler.get_scale():.3g}")
