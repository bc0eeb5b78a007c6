"""A Lightning script in automatic optimisation: a ``LightningModule`` with ``training_step`` and
``configure_optimizers`` (Adam), ``Trainer(accumulate_grad_batches=2)``: Lightning calls
``optimizer.step(closure)`` every second batch and divides each loss by 2 (synthetic regression)."""

import lightning.pytorch as pl
import torch

torch.manual_seed(7)


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))

    def training_step(self, batch, index):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-2)


x = torch.randn(384, 6)
y = 3 * x[:, :1] - x[:, 1:2] + 0.1 * torch.randn(384, 1)
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
trainer = pl.Trainer(max_epochs=1, accumulate_grad_batches=2, accelerator="cpu", logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Regressor(), loader)
