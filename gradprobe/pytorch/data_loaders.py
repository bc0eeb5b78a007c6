"""Which samples a ``torch.utils.data.DataLoader`` hands out, recorded on the host.

The iterator's sampler calls are wrapped: each index (or index list, with a
``batch_sampler`` or ``batch_size``) the sampler yields is queued as it is sent
to be loaded, and taken off the queue when the iterator returns that batch. With
workers the sampler runs ahead of the script (prefetching), and the queue keeps
the two in step, as the iterator returns batches in the order it sent them (the
default ``in_order=True``; with ``in_order=False`` the indices noted for a batch
may belong to another batch of the same epoch). An ``IterableDataset`` has no
indices: its batches are numbered by sample position in the epoch (each
worker's copy of the dataset counts its own samples, so with workers a position
names the batch, not a sample of the source). Nothing touches the device: a
batch's length is read from a tensor's shape.

A loader is named by the script's variable that refers to it when it is first
iterated (``train_loader``), else ``loader1``, ``loader2``... With ``skips``
(``gradprobe run --skip-samples``) the named loaders' samplers leave those
indices out, before anything is loaded.
"""

from __future__ import annotations

import collections
import itertools
import weakref
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _BaseDataLoaderIter, _DatasetKind

from gradprobe.pytorch.naming import variable_names
from gradprobe.recording.batch_log import Batch, BatchLog

STATE = "_gradprobe_batches"


@dataclass
class _Source:
    """One DataLoader as the run knows it."""

    name: str
    skip: frozenset[int]
    epochs: int = 0

    def next_epoch(self) -> int:
        self.epochs += 1
        return self.epochs - 1


@dataclass
class _Pass:
    """One iteration (epoch) of a loader: what was sent to be loaded and not yet handed out."""

    source: _Source
    epoch: int
    map_style: bool
    sent: collections.deque = field(default_factory=collections.deque)
    position: int = 0


def batch_length(data: Any) -> int | None:
    """The number of samples in a collated batch, from its first tensor's shape (no device access)."""
    while True:
        if isinstance(data, Mapping) and data:
            data = next(iter(data.values()))
        elif isinstance(data, (list, tuple)) and data:
            data = data[0]
        else:
            break
    shape = getattr(data, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) else None


class LoaderWatch:
    """Patches the DataLoader iterator to report every batch it hands out to a :class:`BatchLog`."""

    def __init__(self, log: BatchLog, skips: Mapping[str, frozenset[int]] | None = None):
        self.log = log
        self.skips = dict(skips or {})
        self.dropped: collections.Counter[str] = collections.Counter()
        self._sources: weakref.WeakKeyDictionary[DataLoader, _Source] = weakref.WeakKeyDictionary()
        self._unnamed = itertools.count(1)
        self._patches: list[tuple[Any, str, Any]] = []

    def install(self) -> "LoaderWatch":
        """Wrap ``DataLoader.__iter__`` and the iterator's sampler calls and ``__next__``."""
        watch = self
        originals = {f"{owner.__name__}.{name}": getattr(owner, name) for owner, name in self._targets()}
        loader_iter, base_init = originals["DataLoader.__iter__"], originals["_BaseDataLoaderIter.__init__"]
        base_reset, next_index = originals["_BaseDataLoaderIter._reset"], originals["_BaseDataLoaderIter._next_index"]
        base_next = originals["_BaseDataLoaderIter.__next__"]

        def __iter__(loader):
            watch._source(loader)  # named from the script's frame, before the iterator exists
            return loader_iter(loader)

        def __init__(iterator, loader, *args, **kwargs):
            source = watch._sources.get(loader)
            if source is not None:
                iterator.__dict__[STATE] = _Pass(source, source.next_epoch(),
                                                 loader._dataset_kind == _DatasetKind.Map)
            base_init(iterator, loader, *args, **kwargs)

        def _reset(iterator, loader, first_iter=False):
            state = iterator.__dict__.get(STATE)
            if state is not None:
                state.sent.clear()
                state.position = 0
                if not first_iter:  # persistent workers: the same iterator starts another epoch
                    state.epoch = state.source.next_epoch()
            return base_reset(iterator, loader, first_iter)

        def _next_index(iterator):
            state = iterator.__dict__.get(STATE)
            while True:
                index = next_index(iterator)
                if state is None or not state.map_style:
                    return index
                index, kept = watch._without_skipped(state, index)
                if kept:
                    return index

        def __next__(iterator):
            data = base_next(iterator)
            state = iterator.__dict__.get(STATE)
            if state is not None:
                watch._hand_out(state, data)
            return data

        replacements = {"DataLoader.__iter__": __iter__, "_BaseDataLoaderIter.__init__": __init__,
                        "_BaseDataLoaderIter._reset": _reset, "_BaseDataLoaderIter._next_index": _next_index,
                        "_BaseDataLoaderIter.__next__": __next__}
        for owner, name in self._targets():
            key = f"{owner.__name__}.{name}"
            self._patches.append((owner, name, originals[key]))
            setattr(owner, name, replacements[key])
        return self

    @property
    def installed(self) -> bool:
        """Whether the patches are in place."""
        return bool(self._patches)

    @staticmethod
    def _targets():
        return [(DataLoader, "__iter__")] + [(_BaseDataLoaderIter, name) for name in
                                              ("__init__", "_reset", "_next_index", "__next__")]

    def remove(self) -> None:
        """Undo the patches."""
        for owner, name, original in reversed(self._patches):
            setattr(owner, name, original)
        self._patches.clear()

    def _source(self, loader: DataLoader) -> _Source:
        source = self._sources.get(loader)
        if source is None:
            name = variable_names({id(loader): loader}).get(id(loader)) or f"loader{next(self._unnamed)}"
            if any(s.name == name for s in self._sources.values()):
                name = f"{name}#{sum(s.name.split('#')[0] == name for s in self._sources.values()) + 1}"
            source = self._sources[loader] = _Source(name, self.skips.get(name, frozenset()))
        return source

    def _without_skipped(self, state: _Pass, index: Any) -> tuple[Any, bool]:
        """``index`` less the samples to skip, queued as sent; False when nothing of it is left."""
        source = state.source
        single = isinstance(index, int)
        samples = [index] if single else [int(i) for i in index]
        if source.skip:
            kept = [i for i in samples if i not in source.skip]
            self.dropped[source.name] += len(samples) - len(kept)
            if not kept:
                return index, False
            if len(kept) < len(samples):
                samples, index = kept, (kept[0] if single else kept)
        state.sent.append(samples)
        return index, True

    def _hand_out(self, state: _Pass, data: Any) -> None:
        if state.map_style:
            samples = state.sent.popleft() if state.sent else []
            kind = "indices"
        else:
            count = batch_length(data) or 1
            samples = range(state.position, state.position + count)
            state.position += count
            kind = "positions"
        if torch.is_grad_enabled():
            self.log.drawn(Batch(state.source.name, state.epoch, kind, samples))
