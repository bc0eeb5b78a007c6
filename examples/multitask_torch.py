"""Scenario 2 (PyTorch): multi-task learning with a shared trunk, two heads and summed losses.

Task ``digit`` classifies (cross-entropy), task ``price`` regresses a target
in raw units (mean squared error on values around 50). Every ``--task-every``
steps ``gradprobe.task_gradients`` measures each task's gradient on the shared
trunk, so the report shows their norms, their cosine similarity, and that the
unscaled regression loss drowns the classification task on the trunk.
``--balance`` standardises the regression target, which fixes it.

    gradprobe profile examples/multitask_torch.py -- --steps 200
"""

import argparse

import torch
from torch import nn

import gradprobe


def make_data(n: int = 4096, seed: int = 0):
    """Features, a 4-class label and a regression target around 50 (standard deviation about 10)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=g)
    w_class, w_price = torch.randn(20, 4, generator=g), torch.randn(20, generator=g)
    label = (x @ w_class).argmax(dim=1)
    price = 50 + 10 * torch.tanh(x @ w_price / 4) + torch.randn(n, generator=g)
    return x, label, price


class MultiTaskNet(nn.Module):
    """A shared trunk and one head per task."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.digit_head = nn.Linear(64, 4)
        self.price_head = nn.Linear(64, 1)

    def forward(self, x):
        features = self.trunk(x)
        return self.digit_head(features), self.price_head(features).squeeze(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--task-every", type=int, default=5)
    parser.add_argument("--balance", action="store_true", help="standardise the regression target")
    args = parser.parse_args()

    torch.manual_seed(0)
    x, label, price = make_data()
    if args.balance:
        price = (price - price.mean()) / price.std()
    model = MultiTaskNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    for step in range(args.steps):
        idx = torch.randint(0, len(x), (args.batch_size,))
        digit_logits, price_pred = model(x[idx])
        loss_digit = nn.functional.cross_entropy(digit_logits, label[idx])
        loss_price = nn.functional.mse_loss(price_pred, price[idx])
        gradprobe.task_gradients({"digit": loss_digit, "price": loss_price}, shared=model.trunk,
                                 every=args.task_every)
        optimizer.zero_grad()
        (loss_digit + loss_price).backward()
        optimizer.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step}: digit loss {loss_digit.item():.4f}, price loss {loss_price.item():.4f}")


if __name__ == "__main__":
    main()
