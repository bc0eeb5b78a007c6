"""Which batches went into each optimizer step, kept on the host and written with every flush.

Adapters report each batch a loader hands to the script (:meth:`BatchLog.drawn`);
the recorder tells the log when a backward pass starts and when an optimizer
steps. The batches drawn since the previous backward pass belong to that pass;
the passes since the previous step (gradient accumulation) belong to the step,
and to every optimizer that steps on them (a GAN's two optimizers). A backward
pass with no new batch reuses the batch of the pass before it; with no loader
batch at all, the fingerprint of the model's last input (:meth:`BatchLog.seen_input`)
stands for the batch. Batches drawn
with gradients disabled (an evaluation loop under ``torch.no_grad()``) are not
counted. Rows are written as ``batches`` parts (:mod:`gradprobe.store.schema`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from gradprobe.store.sample_ranges import format_ranges


@dataclass(frozen=True)
class Batch:
    """One batch as a loader handed it out: indices, epoch positions, or a fingerprint text."""

    loader: str
    epoch: int
    kind: str  # "indices", "positions" or "fingerprint"
    samples: Sequence[int] = ()
    fingerprint: str = ""

    def row(self) -> tuple:
        """``loader, epoch, kind, first, count, samples`` as the ``batches`` table stores them."""
        if self.kind == "fingerprint":
            return self.loader, self.epoch, self.kind, -1, 1, self.fingerprint
        return (self.loader, self.epoch, self.kind, min(self.samples, default=-1), len(self.samples),
                format_ranges(self.samples))


class BatchLog:
    """The batches of each step, between flushes (host memory only)."""

    def __init__(self, rank: int = 0):
        self.rank = rank
        self._drawn: list[Batch] = []
        self._step_batches: list[Batch] = []
        self._last_pass: list[Batch] = []
        self._input: Batch | None = None
        self._stepped = False
        self._rows: list[tuple] = []
        self._lock = threading.Lock()

    def drawn(self, batch: Batch) -> None:
        """A loader handed ``batch`` to the script."""
        self._drawn.append(batch)

    def seen_input(self, batch: Batch) -> None:
        """A model received an input no loader handed out, fingerprinted as ``batch``."""
        self._input = batch

    @property
    def pending_draws(self) -> bool:
        """Whether a batch was drawn since the last backward pass."""
        return bool(self._drawn)

    @property
    def pending_batch(self) -> bool:
        """Whether a batch was drawn, or a model input seen, since the last backward pass."""
        return bool(self._drawn) or self._input is not None

    def backward(self) -> None:
        """A backward pass starts: the batches drawn since the last one feed it."""
        if self._stepped:
            self._step_batches, self._stepped = [], False
        if self._drawn:
            self._last_pass, self._drawn = self._drawn, []
        elif self._input is not None:
            self._last_pass = [self._input]
        self._input = None
        self._step_batches.extend(self._last_pass)

    def step(self, optimizer: int, step: int) -> None:
        """``optimizer`` takes its step ``step`` with the batches of the passes since the last step."""
        self._stepped = True
        with self._lock:
            self._rows.extend((step, optimizer, self.rank, *batch.row()) for batch in self._step_batches)

    def take_columns(self) -> Mapping[str, list] | None:
        """The rows noted since the last call, as ``batches`` columns (None when there are none)."""
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return None
        names = ("step", "optimizer", "rank", "loader", "epoch", "kind", "first", "count", "samples")
        return {name: [row[i] for row in rows] for i, name in enumerate(names)}

    def write(self, append: Callable[[str, Mapping[str, list]], bool]) -> None:
        """Append the rows noted since the last write as one ``batches`` part."""
        columns = self.take_columns()
        if columns is not None:
            append("batches", columns)
