"""A Hugging Face Accelerate loop: ``Accelerator(gradient_accumulation_steps=2)``, the model,
optimizer, data and scheduler through ``prepare``, ``accelerator.accumulate`` and
``accelerator.backward``, SGD with momentum and a linear schedule (synthetic regression)."""

import torch
from accelerate import Accelerator

torch.manual_seed(3)
accelerator = Accelerator(gradient_accumulation_steps=2, cpu=True)
model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
x = torch.randn(256, 10)
y = x[:, :1] * 3 + 0.1 * torch.randn(256, 1)
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True)
scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.1, total_iters=16)
model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
for xb, yb in loader:
    with accelerator.accumulate(model):
        loss = torch.nn.functional.mse_loss(model(xb), yb)
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
