"""A cheap fingerprint of a model's input, for steps whose batch no DataLoader handed out.

A forward pre-hook on each top-level model that an optimizer updates notes its
first tensor argument (gradients enabled, no DataLoader batch drawn since the
last backward pass). The fingerprint is its shape and dtype and, for a tensor
in host memory, a CRC-32 of up to :data:`PROBES` elements evenly spaced through
it (``shape=[64, 8] float32 crc=1a2b3c4d``): two batches sliced by hand from
different rows differ. For a tensor on an accelerator only the shape, dtype and
device are noted: reading its values would wait for the device, which
recording never does. Inside a ``torch.compile`` graph the hook does nothing.
"""

from __future__ import annotations

import weakref
import zlib
from typing import Any

import torch

from gradprobe.recording.batch_log import Batch, BatchLog

PROBES = 16


def fingerprint(tensor: torch.Tensor) -> str:
    """Shape, dtype and, in host memory, a CRC-32 of a few evenly spaced elements."""
    text = f"shape={list(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"
    if tensor.device.type != "cpu":
        return f"{text} on {tensor.device} (values not read)"
    flat = tensor.detach().reshape(-1)
    if flat.numel():
        probe = flat[:: max(1, flat.numel() // PROBES)][:PROBES]
        text += f" crc={zlib.crc32(probe.cpu().numpy().tobytes()):08x}"
    return text


def first_tensor(args: tuple) -> torch.Tensor | None:
    """The first tensor among ``args`` (looking one level into lists, tuples and dicts)."""
    for value in args:
        if isinstance(value, dict):
            value = next(iter(value.values()), None)
        elif isinstance(value, (list, tuple)) and value:
            value = value[0]
        if isinstance(value, torch.Tensor):
            return value
    return None


class InputFingerprints:
    """Forward pre-hooks on models that note their input's fingerprint in a :class:`BatchLog`."""

    def __init__(self, log: BatchLog):
        self.log = log
        self._handles: dict[int, Any] = {}
        self._models: weakref.WeakSet = weakref.WeakSet()
        self._params: set[int] = set()  # ids of the watched models' parameters

    def covers(self, params: list[torch.Tensor]) -> bool:
        """Whether a watched model owns one of ``params`` already."""
        return any(id(p) in self._params for p in params)

    def attach(self, models: list[torch.nn.Module]) -> None:
        """Watch the inputs of ``models`` (each once)."""
        for model in models:
            if model not in self._models:
                self._models.add(model)
                self._params.update(id(p) for p in model.parameters())
                self._handles[id(model)] = model.register_forward_pre_hook(self._note)

    def _note(self, _module: torch.nn.Module, args: tuple) -> None:
        if self.log.pending_draws or not torch.is_grad_enabled() or torch.compiler.is_compiling():
            return
        tensor = first_tensor(args)
        if tensor is not None:
            self.log.seen_input(Batch("", 0, "fingerprint", fingerprint=fingerprint(tensor)))

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
