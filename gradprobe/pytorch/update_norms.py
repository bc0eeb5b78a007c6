"""The update an optimizer step applied to each parameter, measured on sampled steps.

On a step with per-layer statistics, :meth:`UpdateNorms.before` copies the
parameters the step is about to update (one fused copy, held on their device
only until the step ends); :meth:`UpdateNorms.after` subtracts the updated
parameters from that copy in place and keeps the per-parameter L2 norms of the
difference on the device. Other steps hold nothing. The norms reach the host
with the buffer's flush, as ``updates`` rows (:mod:`gradprobe.store.schema`).

The copy is bounded by :data:`MAX_COPY_BYTES`: a model larger than that has a
slice of its parameters measured on each sampled step, in turn, starting where
the previous sampled step stopped, so every parameter is measured every few
sampled steps and the extra memory never grows with the model (a parameter
larger than the bound alone is measured alone).

The update is what the optimizer really did (learning rate, momentum, Adam's
normalisation, weight decay, a skipped step's zero), whatever produced it.
Sharded parameters (FSDP, DTensor) are left out.
"""

from __future__ import annotations

import numpy as np
import torch

from gradprobe.pytorch.norms import foreach_norms

# At most this much memory for the parameter copy of one sampled step: all of a model up to ~16M
# float32 parameters at once, a rotating slice of a larger one (a 7B bf16 model would need 14 GB).
MAX_COPY_BYTES = 64 * 2**20


class UpdateNorms:
    """Per-parameter update norms of one optimizer's sampled steps, between flushes."""

    def __init__(self, device: torch.device):
        self.device = device
        self._pending: tuple[int, list[int], list[torch.Tensor], list[torch.Tensor]] | None = None
        self._taken: list[tuple[int, list[int], torch.Tensor]] = []
        self._next = 0  # the buffer position the next sampled step's slice starts from

    def before(self, step: int, params: list[torch.Tensor], positions: list[int]) -> None:
        """Copy ``params`` (at ``positions`` of the buffer) before the update of ``step``: all of them,
        or the next slice of at most :data:`MAX_COPY_BYTES`."""
        dense = self._slice([(i, p) for i, p in zip(positions, params) if p.layout == torch.strided])
        if not dense:
            self._pending = None
            return
        params = [p for _, p in dense]
        with torch.no_grad():
            copies = torch._foreach_mul([p.detach() for p in params], 1.0)
        self._pending = (step, [i for i, _ in dense], params, copies)

    def _slice(self, dense: list[tuple[int, torch.Tensor]]) -> list[tuple[int, torch.Tensor]]:
        sizes = [p.numel() * p.element_size() for _, p in dense]
        if sum(sizes) <= MAX_COPY_BYTES:
            return dense
        start = next((k for k, (i, _) in enumerate(dense) if i >= self._next), 0)
        chosen, total = [], 0
        for k in list(range(start, len(dense))) + list(range(start)):
            if chosen and total + sizes[k] > MAX_COPY_BYTES:
                self._next = dense[k][0]
                break
            chosen.append(dense[k])
            total += sizes[k]
        return sorted(chosen, key=lambda item: item[0])

    def after(self) -> None:
        """The step has updated the parameters: keep the norms of the change, drop the copy."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        step, positions, params, copies = pending
        with torch.no_grad():  # read the parameters anew: an optimizer may have replaced ``p.data``
            torch._foreach_sub_(copies, [p.detach() for p in params])
        self._taken.append((step, positions, foreach_norms(copies, 2.0, self.device)))

    def take_columns(self, layer_ids: np.ndarray, optimizer: int, rank: int) -> dict[str, np.ndarray] | None:
        """The norms kept since the last call as ``updates`` columns (one device read), or None."""
        taken, self._taken = self._taken, []
        if not taken:
            return None
        norms = torch.cat([n for _, _, n in taken]).cpu().numpy()
        steps = np.concatenate([np.full(len(positions), step, dtype=np.int64) for step, positions, _ in taken])
        positions = np.concatenate([np.asarray(positions, dtype=np.int64) for _, positions, _ in taken])
        n = len(steps)
        return {"step": steps, "optimizer": np.full(n, optimizer, dtype=np.int16),
                "rank": np.full(n, rank, dtype=np.int16), "layer": np.asarray(layer_ids)[positions],
                "update_norm": norms.astype(np.float32)}
