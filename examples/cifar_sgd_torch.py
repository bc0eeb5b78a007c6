"""Scenario 5: a CIFAR-10-shaped CNN, SGD with momentum, gradients clipped at 0.5, data augmentation.

32x32 colour images in 10 classes (synthetic: each class is a fixed colour
pattern plus noise), augmented on the fly with random horizontal flips and
random 32x32 crops of the image padded by 4 pixels, as the usual CIFAR-10
recipe does. SGD (lr 0.01, momentum 0.9) with ``clip_grad_norm_(params,
max_norm=0.5)`` between ``backward()`` and ``step()``.

    gradprobe profile examples/cifar_sgd_torch.py -- --steps 120
"""

import argparse

import torch
from torch import nn
from torch.nn import functional as F


def make_data(n: int = 2048, seed: int = 0):
    """CIFAR-10-shaped images (n, 3, 32, 32), roughly normalised, and labels 0-9."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(10, 3, 32, 32, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return templates[labels] + torch.randn(n, 3, 32, 32, generator=g), labels


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random horizontal flip, then a random crop of the zero-padded image, per sample."""
    n, _, h, w = images.shape
    flip = torch.rand(n, generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(3), images)
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


class Net(nn.Module):
    """conv(3->32) - pool - conv(32->64) - pool - fc(256) - fc(10)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 8 * 8, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--max-norm", type=float, default=0.5, help="0: no clipping in the script")
    args = parser.parse_args()

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    images, labels = make_data()
    model = Net()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    for step in range(args.steps):
        idx = torch.randint(0, len(images), (args.batch_size,), generator=generator)
        optimizer.zero_grad()
        loss = criterion(model(augment(images[idx], generator)), labels[idx])
        loss.backward()
        if args.max_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_norm=args.max_norm)
        optimizer.step()
        if step % 40 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
