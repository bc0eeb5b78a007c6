"""Seeding Python, NumPy, PyTorch and TensorFlow before a script runs (``--seed``).

Python's generator is seeded at once; NumPy's, PyTorch's and TensorFlow's
when the script (or a library it imports) imports them, so seeding never
imports a library the script does not use. Keras 3 draws its default seeds
from Python's generator, so Keras models are covered too. A script that seeds
itself overrides these seeds.
"""

from __future__ import annotations

import random
import sys
from typing import Callable

Callback = Callable[[object], None]


def _seed_numpy(seed: int) -> Callback:
    def seed_numpy(module: object) -> None:
        module.random.seed(seed % 2**32)

    return seed_numpy


def _seed_torch(seed: int) -> Callback:
    def seed_torch(module: object) -> None:
        module.manual_seed(seed)

    return seed_torch


def _seed_tensorflow(seed: int) -> Callback:
    def seed_tensorflow(_module: object) -> None:
        tensorflow = sys.modules.get("tensorflow")
        if tensorflow is not None and hasattr(tensorflow, "random"):
            tensorflow.random.set_seed(seed)

    return seed_tensorflow


def seeded(callbacks: dict[str, Callback], seed: int | None) -> dict[str, Callback]:
    """Seed Python now, and return ``callbacks`` (post-import hooks by module name) extended to seed
    NumPy, PyTorch and TensorFlow right after they are imported."""
    if seed is None:
        return callbacks
    random.seed(seed)
    seeders = {"numpy": _seed_numpy(seed), "torch": _seed_torch(seed), "tensorflow": _seed_tensorflow(seed),
               "keras": _seed_tensorflow(seed)}
    combined = dict(callbacks)
    for name, seeder in seeders.items():
        combined[name] = _chain(seeder, callbacks.get(name))
    return combined


def _chain(first: Callback, then: Callback | None) -> Callback:
    def both(module: object) -> None:
        first(module)
        if then is not None:
            then(module)

    return both
