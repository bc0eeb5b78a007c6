"""``--seed`` reaches a script that seeds itself: the script's own seeds are mixed with it.

Under ``--seed S`` every seeding call the script makes through the usual
entry points (``random.seed``, ``numpy.random.seed``,
``numpy.random.default_rng``, ``torch.manual_seed``,
``tensorflow.random.set_seed``, ``keras.utils.set_random_seed`` and the CUDA
variants) receives :func:`mixed_seed` of the script's value and ``S``
instead. The same ``S`` reproduces the same run; different values of ``S``
give different runs even when the script fixes its seed, which is what makes
``gradprobe tune``'s repeats measure run-to-run noise. Generators the script
builds and seeds itself (``torch.Generator().manual_seed(0)``) are not
reached.
"""

from __future__ import annotations

import functools
import hashlib
import sys
from typing import Any, Callable

Callback = Callable[[object], None]

# Seeding functions by module, as attribute paths inside the module.
ENTRY_POINTS = {
    "numpy": ("random.seed", "random.default_rng"),
    "torch": ("manual_seed", "random.manual_seed", "cuda.manual_seed", "cuda.manual_seed_all"),
    "tensorflow": ("random.set_seed",),
    "keras": ("utils.set_random_seed",),
}
SEED_BITS = 32  # the widest range every framework accepts (NumPy's legacy seed)


def mixed_seed(script_seed: Any, seed: int) -> int:
    """A seed in ``[0, 2**32)`` determined by the script's seed value and ``--seed``."""
    digest = hashlib.blake2b(f"{script_seed!r}|{seed}".encode(), digest_size=SEED_BITS // 8).digest()
    return int.from_bytes(digest, "little")


def _plain(value: Any) -> bool:
    """Whether ``value`` is a seed given as a plain value (generators and seed sequences pass unchanged)."""
    return isinstance(value, (int, str, bytes)) and not isinstance(value, bool)


def _mixing(function: Callable, seed: int) -> Callable:
    @functools.wraps(function)
    def reseeded(*args, **kwargs):
        if args and _plain(args[0]):
            args = (mixed_seed(args[0], seed), *args[1:])
        elif _plain(kwargs.get("seed")):
            kwargs["seed"] = mixed_seed(kwargs["seed"], seed)
        return function(*args, **kwargs)

    reseeded.__gradprobe_reseeded__ = True
    return reseeded


def _patch(module: object, path: str, seed: int) -> None:
    *parents, name = path.split(".")
    owner = module
    for parent in parents:
        owner = getattr(owner, parent, None)
        if owner is None:
            return
    function = getattr(owner, name, None)
    if callable(function) and not getattr(function, "__gradprobe_reseeded__", False):
        setattr(owner, name, _mixing(function, seed))


def _reseeder(paths: tuple[str, ...], seed: int) -> Callback:
    def reseed(module: object) -> None:
        for path in paths:
            _patch(module, path, seed)

    return reseed


def reseeding(seed: int) -> dict[str, Callback]:
    """Mix ``seed`` into Python's ``random.seed`` now, and return post-import callbacks that do the
    same for NumPy, PyTorch, TensorFlow and Keras when the script imports them."""
    _patch(sys.modules["random"], "seed", seed)
    return {name: _reseeder(paths, seed) for name, paths in ENTRY_POINTS.items()}

