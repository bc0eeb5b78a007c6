"""Squared gradient norms of one data-parallel rank and of the all-reduced gradient, read from DDP's buckets.

Under ``DistributedDataParallel`` with W ranks, each rank's backward pass
produces the gradient of its own batch, and DDP's all-reduce replaces it with
the mean over the ranks: gradients of two batch sizes, b and W b, as gradient
accumulation gives (:mod:`gradprobe.pytorch.micro_batches`). :class:`ReplicaNorms`
reads both where DDP already holds them, in its gradient buckets: a comm hook
(torch's default ``allreduce_hook``, the same division and sum as DDP's
built-in all-reduce, so training is bit-for-bit unchanged) takes the squared
norm of each bucket before the all-reduce and of the reduced bucket after it,
on the sampled steps only; other steps cost one Python call per bucket. The
norms stay on the device until the step buffer's flush writes ``noise`` rows
with K = W (``micro_sq``: this rank's squared norm, an unbiased sample of the
mean over ranks; ``total_sq``: W² x the reduced one). With accumulation under
``no_sync()`` the buckets hold each rank's accumulated gradient, so b is the
rank's samples per step.

The hook is registered at the first ``backward()`` through each DDP module
built in the process; a module that already has a comm hook (the script's own,
e.g. fp16 compression), or that refuses one, is left alone and not measured.
"""

from __future__ import annotations

import threading
import weakref

import torch

from gradprobe.pytorch.norms import dense


def _squared(tensor: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(dense(tensor).detach(), dtype=torch.float32).square()


class ReplicaNorms:
    """The local and all-reduced squared gradient norms of the current step, over the DDP modules."""

    def __init__(self):
        self._modules: weakref.WeakSet = weakref.WeakSet()  # DDP modules not yet given the hook
        self.measuring = False  # measure the buckets of the backward pass under way
        self._lock = threading.Lock()  # the reduced buckets' callbacks may run on communication threads
        self._local: list[torch.Tensor] = []
        self._reduced: list[torch.Tensor] = []
        self._plain_allreduce = None  # torch's allreduce_hook, imported with the first module hooked

    def watch(self, ddp: torch.nn.Module) -> None:
        """A DDP module was built: hook it at the next :meth:`hook_modules`."""
        self._modules.add(ddp)

    def hook_modules(self) -> None:
        """Give every DDP module built so far the measuring all-reduce, unless it has a comm hook."""
        if not self._modules:
            return
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        self._plain_allreduce = allreduce_hook
        modules, self._modules = list(self._modules), weakref.WeakSet()
        for ddp in modules:
            if getattr(ddp, "_comm_hooks", None):
                continue
            try:
                ddp.register_comm_hook(ddp.process_group, self._allreduce)
            except (RuntimeError, ValueError, AttributeError):  # a built-in hook, or a DDP that takes none
                continue

    def _allreduce(self, process_group, bucket):
        if not self.measuring:
            return self._plain_allreduce(process_group, bucket)
        local = _squared(bucket.buffer())
        with self._lock:
            self._local.append(local)

        def reduced(future):  # allreduce_hook's future holds the reduced bucket
            tensor = future.value()
            with self._lock:
                self._reduced.append(_squared(tensor))
            return tensor

        return self._plain_allreduce(process_group, bucket).then(reduced)

    def take(self, world_size: int) -> tuple[int, torch.Tensor, torch.Tensor] | None:
        """``(W, local squared norm, W² x reduced squared norm)`` of the step just ended, or None
        when nothing was measured (or not every bucket came back); forgets them."""
        with self._lock:
            local, reduced, self._local, self._reduced = self._local, self._reduced, [], []
        if not local or len(local) != len(reduced):
            return None
        return world_size, torch.stack(local).sum(), torch.stack(reduced).sum() * world_size**2
