"""Squared gradient norms of the micro-batches accumulated into each optimizer step.

With gradient accumulation (several ``backward()`` calls per optimizer step, each
on a batch of its own), what a backward pass adds to the gradients is the
gradient of one micro-batch. :class:`MicroBatchNorms` measures its squared L2
norm as the change of the accumulated ``.grad``: before the second and later
passes it copies the gradients (one fused copy into a scratch buffer freed at
the optimizer step), after each such pass it subtracts the new gradients in
place and takes two fused norms (the difference, and the accumulated gradient).
The first pass's contribution is the gradient it leaves behind. A step with a
single backward pass costs nothing. Everything stays on the device until the
buffer's flush writes ``noise`` rows (:mod:`gradprobe.store.schema`). The recorder
measures the steps that record per-layer statistics (every ``--every`` steps).

Both norms are read right after the backward passes, in the same units (before
``GradScaler`` unscales and before any clipping), so their ratio is exact
whatever the loss scale or the script's ``loss / K``. A step is left out when
a backward pass drew no new batch (several losses of one batch are not
micro-batches), when the gradients were reset mid-step, or when the set of
parameters with a gradient changed between passes.
"""

from __future__ import annotations

import numpy as np
import torch

from gradprobe.pytorch.norms import dense, foreach_norms


class MicroBatchNorms:
    """The micro-batch and accumulated squared gradient norms of the current optimizer step."""

    def __init__(self, device: torch.device):
        self.device = device
        self.params: list[torch.Tensor] = []
        self.passes = 0  # backward passes since the last step
        self.valid = True
        self._present: list[int] = []
        self._scratch: list[torch.Tensor] = []
        self._micro_sq: torch.Tensor | None = None  # summed over the passes
        self._total_sq: torch.Tensor | None = None  # after the latest pass

    def _grads(self) -> list[torch.Tensor]:
        return [dense(self.params[i].grad).detach() for i in self._present]

    def before_backward(self, params: list[torch.Tensor], new_batch: bool) -> None:
        """A backward pass of the current step starts on ``params``; ``new_batch``: it draws data
        of its own."""
        if self.passes == 0:
            self.params, self.valid, self._micro_sq, self._total_sq = params, True, None, None
            return
        if not new_batch or params is not self.params:
            self.valid = False
        if not self.valid:
            return
        present = [i for i, p in enumerate(self.params) if p.grad is not None]
        if self.passes == 1:
            self._present = present
        elif present != self._present:
            self.valid = False
            return
        grads = self._grads()
        if self.passes == 1:
            self._micro_sq = foreach_norms(grads, 2.0, self.device).square().sum()
        if len(self._scratch) != len(grads):
            self._scratch = [torch.empty_like(g) for g in grads]
        torch._foreach_copy_(self._scratch, grads)

    def gradients_reset(self) -> None:
        """The script reset gradients (``zero_grad``): mid-step, this step's accumulation is broken."""
        if self.passes:
            self.valid = False

    def after_backward(self) -> None:
        """The backward pass ended: add its contribution's squared norm."""
        self.passes += 1
        if self.passes < 2 or not self.valid:
            return
        if [i for i, p in enumerate(self.params) if p.grad is not None] != self._present:
            self.valid = False
            return
        grads = self._grads()
        self._total_sq = foreach_norms(grads, 2.0, self.device).square().sum()
        torch._foreach_sub_(self._scratch, grads)
        self._micro_sq = self._micro_sq + foreach_norms(self._scratch, 2.0, self.device).square().sum()

    def take(self) -> tuple[int, torch.Tensor, torch.Tensor] | None:
        """At the optimizer step: ``(K, mean micro-batch squared norm, accumulated squared norm)``
        of the passes since the last step, or None (fewer than two passes, or left out); starts
        the next step."""
        passes, self.passes = self.passes, 0
        self._scratch = []  # held only within a measured step
        if passes < 2 or not self.valid or self._total_sq is None:
            return None
        return passes, self._micro_sq / passes, self._total_sq



def noise_columns(rows: list[tuple[int, int, torch.Tensor, torch.Tensor]], optimizer: int,
                  rank: int) -> dict[str, np.ndarray] | None:
    """``(step, K, micro_sq, total_sq)`` rows as ``noise`` columns (one device read), or None."""
    if not rows:
        return None
    values = torch.stack([torch.stack([micro, total]) for _, _, micro, total in rows]).cpu().numpy()
    n = len(rows)
    return {"step": np.asarray([r[0] for r in rows], dtype=np.int64),
            "optimizer": np.full(n, optimizer, dtype=np.int16), "rank": np.full(n, rank, dtype=np.int16),
            "micro_batches": np.asarray([r[1] for r in rows], dtype=np.int32),
            "micro_sq": values[:, 0].astype(np.float32), "total_sq": values[:, 1].astype(np.float32)}
