"""TensorFlow / Keras 3 adapter: hooks on Keras optimizers that record the gradients they apply.

The recorder is imported on first use, so that the policies' TensorFlow
backend can use this package's ops without importing the recorder.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"TFRecorder": "recorder", "active_recorder": "recorder", "VariableNamer": "naming"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
