"""Scenario 4: a multi-modal network, an image branch and a text branch fused into one head.

Each sample is a 16x16 image and a bag of word ids; the label depends on both.
The image branch is a small CNN, the text branch an ``EmbeddingBag`` over a
large vocabulary followed by a linear layer, and the head classifies the
concatenated features. The images are not normalised (pixel values of a few
units) while the word vectors start small, so the image branch gets gradients
orders of magnitude larger per parameter than the text branch: the imbalance
that studies of modality imbalance (e.g. OGM-GE) describe, where one modality
dominates the shared objective and the other barely learns. ``gradprobe report --group
image='image.*' --group text='text.*'`` says which modality dominates and
over which steps, and the HTML report plots each group's norm over time.

    gradprobe profile examples/multimodal_torch.py -- --steps 150
"""

import argparse

import torch
from torch import nn

VOCAB = 50_000
WORDS = 12


def make_data(n: int = 4096, seed: int = 0):
    """Images (n, 1, 16, 16), word ids (n, WORDS) and 4-class labels that need both modalities."""
    g = torch.Generator().manual_seed(seed)
    shape = torch.randint(0, 2, (n,), generator=g)
    topic = torch.randint(0, 2, (n,), generator=g)
    templates = torch.randn(2, 1, 16, 16, generator=g)
    images = 4 * (templates[shape] + 0.8 * torch.randn(n, 1, 16, 16, generator=g))  # not normalised
    topic_words = torch.randint(0, VOCAB, (2, 200), generator=g)
    picks = torch.randint(0, 200, (n, WORDS), generator=g)
    words = torch.where(torch.rand(n, WORDS, generator=g) < 0.5, topic_words[topic[:, None], picks],
                        torch.randint(0, VOCAB, (n, WORDS), generator=g))
    return images, words, 2 * shape + topic


class ImageBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.proj = nn.Linear(32, 32)

    def forward(self, x):
        return self.proj(self.conv(x).flatten(1))


class TextBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.EmbeddingBag(VOCAB, 32, mode="mean")
        nn.init.normal_(self.embed.weight, std=0.001)
        self.proj = nn.Linear(32, 32)

    def forward(self, words):
        return self.proj(self.embed(words))


class MultiModalNet(nn.Module):
    """Late fusion: the two branches' features are concatenated and classified by one head."""

    def __init__(self):
        super().__init__()
        self.image = ImageBranch()
        self.text = TextBranch()
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(64, 4))

    def forward(self, images, words):
        return self.head(torch.cat([self.image(images), self.text(words)], dim=1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    torch.manual_seed(0)
    images, words, labels = make_data()
    model = MultiModalNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    for step in range(args.steps):
        idx = torch.randint(0, len(labels), (args.batch_size,))
        optimizer.zero_grad()
        loss = loss_fn(model(images[idx], words[idx]), labels[idx])
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
