"""A Lightning script in manual optimisation (``automatic_optimization = False``): ``self.optimizers()``,
``self.manual_backward(loss / 2)`` on every batch, ``opt.step()`` and ``opt.zero_grad()`` every second
one, SGD with momentum (synthetic regression)."""

import lightning.pytorch as pl
import torch

torch.manual_seed(9)


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))

    def training_step(self, batch, index):
        opt = self.optimizers()
        x, y = batch
        self.manual_backward(torch.nn.functional.mse_loss(self.net(x), y) / 2)
        if (index + 1) % 2 == 0:
            opt.step()
            opt.zero_grad()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


x = torch.randn(384, 6)
y = 3 * x[:, :1] - x[:, 1:2] + 0.1 * torch.randn(384, 1)
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Regressor(), loader)
