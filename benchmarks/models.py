"""The models the overhead benchmarks train: a CIFAR-shaped CNN and a transformer-style stack.

Each ``make_*`` returns a :class:`Workload`: the model, its optimizer, and a
function producing the loss of one synthetic batch (fixed, so that step times
do not depend on data loading).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass
class Workload:
    """A model with its optimizer and a loss closure over one fixed synthetic batch."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[[], torch.Tensor]

    @property
    def params(self) -> list[torch.Tensor]:
        """The trainable parameters, in model order."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def describe(self) -> dict:
        """Parameter count and number of parameter tensors."""
        return {"parameters": sum(p.numel() for p in self.params), "tensors": len(self.params)}


class CifarCNN(nn.Module):
    """Three conv-BN-ReLU-pool blocks and a two-layer head, for 3x32x32 images."""

    def __init__(self, classes: int = 10):
        super().__init__()
        widths = (3, 32, 64, 128)
        blocks = []
        for cin, cout in zip(widths, widths[1:]):
            blocks += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                       nn.MaxPool2d(2)]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(128 * 4 * 4, 256), nn.ReLU(), nn.Linear(256, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TransformerStack(nn.Module):
    """A pre-norm transformer encoder language model: embeddings, ``layers`` blocks, a tied head."""

    def __init__(self, vocab: int = 2048, dim: int = 256, layers: int = 12, heads: int = 4, context: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.zeros(context, dim))
        block = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.position[: tokens.shape[1]]
        return self.norm(self.blocks(h)) @ self.embed.weight.T


def make_cnn(batch: int = 16, seed: int = 0) -> Workload:
    """CIFAR-10-shaped CNN (about 0.6M parameters, 13 tensors), SGD with momentum."""
    torch.manual_seed(seed)
    model = CifarCNN()
    images, labels = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    return Workload("cnn", model, optimizer, lambda: loss_fn(model(images), labels))


def make_transformer(batch: int = 4, context: int = 32, seed: int = 0) -> Workload:
    """Transformer-style stack (about 10M parameters, 148 tensors), AdamW."""
    torch.manual_seed(seed)
    model = TransformerStack(context=context)
    tokens = torch.randint(0, 2048, (batch, context + 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    def loss() -> torch.Tensor:
        logits = model(tokens[:, :-1])
        return loss_fn(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))

    return Workload("transformer", model, optimizer, loss)


WORKLOADS: dict[str, Callable[[], Workload]] = {"cnn": make_cnn, "transformer": make_transformer}
