"""The Keras callback that flushes a recorder between ``fit`` batches.

Inside ``fit`` the host runs between batches anyway, so the recorder's
buffers are read there every ``flush_every`` steps (or ``flush_seconds``)
instead of from inside the compiled train function. This is also what makes
recording work when ``fit`` compiles with XLA. The work is done when a batch
begins, for the batches before it, and at the end of training.
"""

from __future__ import annotations

import time
from typing import Any

import keras

from gradprobe.recording.session import StopTraining


class FitHooks(keras.callbacks.Callback):
    """Flushes :attr:`recorder` during ``fit`` and ends training once ``max_steps`` are recorded."""

    def __init__(self, recorder: Any = None):
        super().__init__()
        self.recorder = recorder
        self._steps = 0
        self._last = time.monotonic()

    def on_train_begin(self, logs=None):
        self._steps = 0
        self._last = time.monotonic()

    def on_train_batch_begin(self, batch, logs=None):
        # Working when the next batch begins, not when this one ends, keeps Keras free to dispatch
        # batch-end callbacks asynchronously (a batch-end hook makes it read the logs every batch).
        if self.recorder.limit_reached():
            self.recorder.flush()
            raise StopTraining(f"max steps ({self.recorder.session.max_steps}) reached")
        sampling = self.recorder.session.sampling
        per_batch = max(1, int(getattr(self.model, "steps_per_execution", 1) or 1))
        if self._steps + per_batch > sampling.flush_every or time.monotonic() - self._last > sampling.flush_seconds:
            self.recorder.flush()
            self._steps = 0
            self._last = time.monotonic()
        self._steps += per_batch

    def on_train_end(self, logs=None):
        self.recorder.flush()
