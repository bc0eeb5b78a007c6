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
        self._steps = 0  # steps since the last flush
        self._batches = 0  # batches begun in all
        self._last = time.monotonic()

    def on_train_begin(self, logs=None):
        self._steps = 0
        self._batches = 0
        self._last = time.monotonic()

    def on_train_batch_begin(self, batch, logs=None):
        # Working when the next batch begins, not when this one ends, keeps Keras free to dispatch
        # batch-end callbacks asynchronously (a batch-end hook makes it read the logs every batch).
        if self.recorder.limit_reached():
            self.recorder.flush()
            raise StopTraining(f"max steps ({self.recorder.session.max_steps}) reached")
        session = self.recorder.session
        per_batch = max(1, int(getattr(self.model, "steps_per_execution", 1) or 1))
        full = self._steps + per_batch > session.sampling.flush_every
        if full or (self._steps and session.flush_due(self._batches, time.monotonic() - self._last)):
            self.recorder.flush()
            self._steps = 0
            self._last = time.monotonic()
        self._steps += per_batch
        self._batches += 1

    def on_train_end(self, logs=None):
        self.recorder.flush()
