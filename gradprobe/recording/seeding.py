"""Seeding Python, NumPy, PyTorch and TensorFlow before a script runs (``--seed``).

Python's and NumPy's generators are seeded at once; PyTorch's and
TensorFlow's when the script imports them, so seeding never imports a
framework the script does not use. Keras 3 draws its default seeds from
Python's generator, so Keras models are covered too. A script that seeds
itself overrides these seeds.
"""

from __future__ import annotations

import random
import sys
from typing import Callable

import numpy as np

from gradprobe.errors import GradprobeError

Callback = Callable[[object], None]
SEED_RANGE = range(-(2**63), 2**64)  # what every framework's seeding accepts (PyTorch's is the narrowest)


def check_seed(seed: int | None) -> int | None:
    """Return ``seed`` if every framework can be seeded with it, else raise a one-line error."""
    if seed is not None and seed not in SEED_RANGE:
        raise GradprobeError(f"--seed {seed} is out of range: use an integer from -2**63 to 2**64-1")
    return seed


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
    """Seed Python and NumPy now, and return ``callbacks`` (post-import hooks by module name)
    extended to seed PyTorch and TensorFlow right after the script imports them."""
    if seed is None:
        return callbacks
    random.seed(seed)
    np.random.seed(seed % 2**32)
    seeders = {"torch": _seed_torch(seed), "tensorflow": _seed_tensorflow(seed), "keras": _seed_tensorflow(seed)}
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
