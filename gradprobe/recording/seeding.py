"""Seeding Python, NumPy, PyTorch and TensorFlow before a script runs (``--seed``).

Python's and NumPy's generators are seeded at once; PyTorch's and
TensorFlow's when the script imports them, so seeding never imports a
framework the script does not use. Keras 3 draws its default seeds from
Python's generator, so Keras models are covered too. A script that seeds
itself gets its own seeds mixed with ``--seed`` (:mod:`gradprobe.recording.reseeding`).
"""

from __future__ import annotations

import random
import sys
from typing import Callable

import numpy as np

from gradprobe.recording.reseeding import reseeding

Callback = Callable[[object], None]


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
