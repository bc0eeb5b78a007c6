"""Scenario 3 (PyTorch): a small CNN on MNIST-shaped data with global-norm clipping.

28x28 grey images in 10 classes (synthetic: each class is a fixed random
stroke pattern plus noise), a two-convolution CNN, Adam, and
``clip_grad_norm_`` at ``--max-norm`` on a list of the parameters, between
``backward()`` and ``step()``.

    gradprobe profile examples/mnist_cnn_torch.py -- --steps 150
"""

import argparse

import torch
from torch import nn


def make_data(n: int = 4096, seed: int = 0):
    """MNIST-shaped images (n, 1, 28, 28) in [0, 1] and labels 0-9."""
    g = torch.Generator().manual_seed(seed)
    templates = (torch.rand(10, 1, 28, 28, generator=g) > 0.8).float()
    labels = torch.randint(0, 10, (n,), generator=g)
    images = (0.7 * templates[labels] + 0.3 * torch.rand(n, 1, 28, 28, generator=g)).clamp(0, 1)
    return images, labels


class Net(nn.Module):
    """conv(1->16) - pool - conv(16->32) - pool - fc(128) - fc(10)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-norm", type=float, default=1.0, help="0: no clipping in the script")
    args = parser.parse_args()

    torch.manual_seed(0)
    images, labels = make_data()
    model = Net()
    params = list(model.parameters())  # a list: a generator would be empty on its second use
    optimizer = torch.optim.Adam(params, lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    for step in range(args.steps):
        idx = torch.randint(0, len(images), (args.batch_size,))
        optimizer.zero_grad()
        loss = loss_fn(model(images[idx]), labels[idx])
        loss.backward()
        if args.max_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_norm=args.max_norm)
        optimizer.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
