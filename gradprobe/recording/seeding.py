"""Seeding Python, NumPy, PyTorch and TensorFlow before a script runs (``--seed``).

Python's generator is seeded at once; NumPy's, PyTorch's and TensorFlow's
when the script (or a library it imports) imports them, so seeding never
imports a library the script does not use. Keras 3 draws its default seeds
from Python's generator, so Keras models are covered too. A script that seeds
itself gets its own seeds mixed with ``--seed`` (:mod:`gradprobe.recording.reseeding`).
"""

from __future__ import annotations

import random
import sys
from typing import Callable

from gradprobe.recording.reseeding import reseeding

from gradprobe.errors import GradprobeError

Callback = Callable[[object], None]
SEED_RANGE = range(-(2**63), 2**64)  # what every framework's seeding accepts (PyTorch's is the narrowest)


def check_seed(seed: int | None) -> int | None:
    """Return ``seed`` if every framework can be seeded with it, else raise a one-line error."""
    if seed is not None and seed not in SEED_RANGE:
        raise GradprobeError(f"--seed {seed} is out of range: use an integer from -2**63 to 2**64-1")
    return seed


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
    reseeders = reseeding(seed)
    combined = dict(callbacks)
    for name in seeders.keys() | reseeders.keys():
        combined[name] = _chain(seeders.get(name), callbacks.get(name), reseeders.get(name))
    return combined


def _chain(*callbacks: Callback | None) -> Callback:
    def in_order(module: object) -> None:
        for callback in callbacks:
            if callback is not None:
                callback(module)

    return in_order
