"""Synthetic data shared by the benchmark scripts (no downloads)."""

import torch


def regression(n=512, d=16, seed=0):
    """x ~ N(0, I), y = x @ w + noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, x @ torch.randn(d, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)


def classes(n=1024, d=16, k=4, seed=0):
    """Gaussian blobs: k separable classes in d dimensions."""
    g = torch.Generator().manual_seed(seed)
    centers = 3 * torch.randn(k, d, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    return centers[y] + torch.randn(n, d, generator=g), y


def images(n=512, k=4, seed=0):
    """16x16 one-channel 'digits': a noisy fixed template per class."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(k, 1, 16, 16, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    return templates[y] + 0.5 * torch.randn(n, 1, 16, 16, generator=g), y


def tokens(n=4096, vocab=32, seed=0):
    """A token stream with structure: each token mostly predicts the next (t -> t*3+1 mod vocab)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(n, dtype=torch.long)
    for i in range(1, n):
        out[i] = (out[i - 1] * 3 + 1) % vocab if torch.rand(1, generator=g) < 0.8 else torch.randint(0, vocab, (1,),
                                                                                                   generator=g)
    return out


def batches(x, y, size, steps):
    """``steps`` minibatches cycling through (x, y) in order."""
    for i in range(steps):
        idx = torch.arange(i * size, (i + 1) * size) % len(x)
        yield i, x[idx], y[idx]
