"""The update an optimizer step applied to each parameter, measured on sampled steps.

On a step with per-layer statistics, :meth:`UpdateNorms.before` copies the
parameters the step is about to update (one fused copy, held on their device
only until the step ends); :meth:`UpdateNorms.after` subtracts the updated
parameters from that copy in place and keeps the per-parameter L2 norms of the
difference on the device. Other steps hold nothing. The norms reach the host
with the buffer's flush, as ``updates`` rows (:mod:`gradprobe.store.schema`).

The update is what the optimizer really did (learning rate, momentum, Adam's
normalisation, weight decay, a skipped step's zero), whatever produced it.
Sharded parameters (FSDP, DTensor) are left out.
"""

from __future__ import annotations

import numpy as np
import torch

from gradprobe.pytorch.norms import foreach_norms


class UpdateNorms:
    """Per-parameter update norms of one optimizer's sampled steps, between flushes."""

    def __init__(self, device: torch.device):
        self.device = device
        self._pending: tuple[int, list[int], list[torch.Tensor], list[torch.Tensor]] | None = None
        self._taken: list[tuple[int, list[int], torch.Tensor]] = []

    def before(self, step: int, params: list[torch.Tensor], positions: list[int]) -> None:
        """Copy ``params`` (at ``positions`` of the buffer) before the update of ``step``."""
        dense = [(i, p) for i, p in zip(positions, params) if p.layout == torch.strided]
        if not dense:
            self._pending = None
            return
        params = [p for _, p in dense]
        with torch.no_grad():
            copies = torch._foreach_mul([p.detach() for p in params], 1.0)
        self._pending = (step, [i for i, _ in dense], params, copies)

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
