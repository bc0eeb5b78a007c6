"""TensorFlow / Keras 3 adapter: hooks on Keras optimizers that record the gradients they apply, and clip them.

``recorder.TFRecorder`` installs the hooks, ``naming.VariableNamer`` names
variables, ``step_buffer.TFStepBuffer`` holds one optimizer's buffers in
TensorFlow variables, ``clip`` is the clip backend (``TFClipper``), ``fit``
the callback that flushes between ``fit`` batches. Modules are imported on
first use, so that the clip backend can be used without the recorder.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"TFRecorder": "recorder", "active_recorder": "recorder", "VariableNamer": "naming", "TFClipper": "clip"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
