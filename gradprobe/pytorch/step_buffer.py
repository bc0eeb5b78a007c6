"""On-device buffers of one optimizer's steps, copied to the host and written every flush."""

from __future__ import annotations

import math
import time
from typing import Mapping

import numpy as np
import torch

from gradprobe.store.columns import LAYER_STATS, STEP_COLUMNS, layers_columns, steps_columns
from gradprobe.recording.deferred_signals import critical
from gradprobe.pytorch.naming import ParamNamer
from gradprobe.pytorch.norms import dense, foreach_norms, global_norm, nonfinite_counts
from gradprobe.pytorch.micro_batches import noise_columns
from gradprobe.pytorch.sharding import counted, is_sharded, local
from gradprobe.pytorch.update_norms import UpdateNorms
from gradprobe.recording.session import Session



class StepStats:
    """What one step measured, on the device: per-layer L2 norms and the global norm.

    ``present`` lists the positions (into the buffer's parameters) that had a
    gradient; ``norms`` holds their L2 norms in that order, already divided by
    ``grad_scale`` when the gradients are still scaled (fused AMP optimizers).
    With sharded parameters ``grads`` are this rank's shards, ``weights``
    says which norms count towards the cross-rank sum (see
    :mod:`gradprobe.pytorch.sharding`) and ``global_norm`` is this rank's part.
    """

    def __init__(self, present: list[int], grads: list[torch.Tensor], norms: torch.Tensor,
                 grad_scale: torch.Tensor | None = None, weights: torch.Tensor | None = None):
        self.present = present
        self.grads = grads
        self.norms = norms
        self.grad_scale = grad_scale
        self.weights = weights
        self.global_norm = global_norm(norms if weights is None else norms * weights)


class StepBuffer:
    """Records the steps of one optimizer (or of backward passes in a loop without one).

    Per step it writes one row of :data:`STEP_COLUMNS` into a device buffer;
    every ``sampling.every`` steps it also writes per-layer L2 norm, max-abs,
    non-finite count and parameter norm. Nothing is read back to the host
    until :meth:`flush`.
    """

    def __init__(self, session: Session, namer: ParamNamer, index: int | None, params: list[torch.Tensor],
                 known: Mapping[int, int] | None = None):
        """``known``: layer ids, by parameter id, of parameters an earlier buffer of the same
        optimizer registered (before its parameter set changed); they keep their ids.
        ``index`` None: a provisional buffer, neither registered in the run nor flushed until
        :meth:`register` gives it its optimizer index (or it is dropped)."""
        self.session = session
        self.index = index
        names = namer.names(params)
        order = sorted(range(len(params)), key=lambda i: names[i].order)
        self.params = [params[i] for i in order]
        self.param_ids = {id(p) for p in self.params}
        self.layout_key: tuple = ()  # the optimizer's group sizes and requires_grad flags it was built for
        self._known = dict(known or {})
        self._new_layers = [
            (id(params[i]), {
                "name": names[i].name,
                "group": names[i].group,
                "shape": list(params[i].shape),
                "numel": params[i].numel(),
                "dtype": str(params[i].dtype).removeprefix("torch."),
                **({"sharded": True} if is_sharded(params[i]) else {}),
            })
            for i in order if id(params[i]) not in self._known
        ]
        self.layer_ids = np.zeros(0, dtype=np.int32)
        if index is not None:
            self.register(index)
        self.device = self.params[0].device if self.params else torch.device("cpu")
        sharded = [is_sharded(p) for p in self.params]
        self.weights = counted(sharded, session.layout["rank"], self.device) if any(sharded) else None
        if self.weights is not None:
            session.record_every_rank()
        sampling = session.sampling
        self.every = sampling.every
        capacity = sampling.flush_every
        self.rows = torch.zeros((capacity, len(STEP_COLUMNS)), dtype=torch.float32, device=self.device)
        layer_capacity = math.ceil(capacity / self.every) + 1
        self.layer_stats = torch.zeros((layer_capacity, len(self.params), len(LAYER_STATS)), device=self.device)
        self.layer_nonfinite = torch.zeros((layer_capacity, len(self.params)), dtype=torch.int64,
                                           device=self.device)
        self.nan = torch.tensor(math.nan, device=self.device)
        self.one = torch.tensor(1.0, device=self.device)
        self.zero = torch.tensor(0.0, device=self.device)
        self.updates = UpdateNorms(self.device)  # the applied updates of sampled steps
        self._noise: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []  # micro-batch norms per step
        self.steps = 0
        self._host_steps: list[int] = []
        self._host_times: list[float] = []
        self._host_layer_steps: list[tuple[int, list[int]]] = []
        self._last_flush = time.monotonic()

    def register(self, index: int) -> None:
        """Register this buffer's layers in the run as those of optimizer ``index``."""
        self.index = index
        ids = self.session.add_layers([{**layer, "optimizer": index} for _, layer in self._new_layers])
        self._known.update(zip((pid for pid, _ in self._new_layers), ids))
        self._new_layers = []
        self.layer_ids = np.asarray([self._known[id(p)] for p in self.params], dtype=np.int32)

    @property
    def full(self) -> bool:
        """Whether the device buffer has no room for another step until it is flushed."""
        return len(self._host_steps) == self.rows.shape[0]

    def registered(self) -> dict[int, int]:
        """This buffer's layer ids by parameter id."""
        return dict(zip(map(id, self.params), self.layer_ids.tolist()))

    def measure(self, grad_scale: torch.Tensor | None = None) -> StepStats:
        """Read the current gradients: per-layer and global L2 norms (divided by ``grad_scale``),
        plus, on a sampled step, the per-layer statistics. Call it before anything modifies the
        gradients (clipping), so every recorded figure describes the same, pre-clip gradients."""
        present = [i for i, p in enumerate(self.params) if p.grad is not None]
        grads = [local(dense(self.params[i].grad)).detach() for i in present]  # create_graph=True
        norms = foreach_norms(grads, 2.0, self.device)
        if grad_scale is not None:
            grad_scale = grad_scale.to(self.device)
            norms = norms / grad_scale
        weights = None if self.weights is None else self.weights[present]
        stats = StepStats(present, grads, norms, grad_scale, weights)
        if self.sampled:
            self._record_layers(stats)
        return stats

    @property
    def sampled(self) -> bool:
        """Whether the next step recorded is one with per-layer statistics."""
        return self.steps % self.every == 0

    def note_micro_batches(self, measured: tuple[int, torch.Tensor, torch.Tensor]) -> None:
        """The next step accumulated ``K`` backward passes: ``(K, mean micro squared norm, accumulated
        squared norm)`` (:class:`~gradprobe.pytorch.micro_batches.MicroBatchNorms`)."""
        self._noise.append((self.steps, *measured))

    def record(
        self,
        stats: StepStats,
        loss: torch.Tensor | None = None,
        skipped: torch.Tensor | bool = False,
        pre_norm: torch.Tensor | None = None,
        post_norm: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
        threshold: torch.Tensor | float | None = None,
    ) -> None:
        """Write one step into the device buffers; flush when full or when the interval elapsed.

        ``stats`` measured the gradients; ``pre_norm`` / ``post_norm`` override
        the global norm before / after clipping when clipping happened outside
        that measurement (the script's own clip call, or gradprobe's policy).
        """
        with critical:  # a signal arriving mid-update waits, so the buffers stay consistent
            slot = len(self._host_steps)
            row = torch.stack(
                [
                    stats.global_norm if pre_norm is None else pre_norm,
                    stats.global_norm if post_norm is None else post_norm,
                    self.one if scale is None else scale.float(),
                    self._scalar(threshold),
                    self._scalar(loss),
                    self._scalar(skipped),
                ]
            )
            self.rows[slot].copy_(row)
            self._host_steps.append(self.steps)
            self._host_times.append(time.time())
            self.steps += 1
            due = self.full or self.session.flush_due(self.steps, time.monotonic() - self._last_flush)
            if due and self.index is not None:
                self.flush()

    def _scalar(self, value: torch.Tensor | float | bool | None) -> torch.Tensor:
        if value is None:
            return self.nan
        if isinstance(value, torch.Tensor):
            return value.detach().reshape(()).to(self.device, torch.float32, non_blocking=True)
        if isinstance(value, bool):
            return self.one if value else self.zero
        return torch.full((), float(value), device=self.device)

    def _record_layers(self, stats: StepStats) -> None:
        with critical:
            if self._host_layer_steps and self._host_layer_steps[-1][0] == self.steps:
                self._host_layer_steps.pop()  # the same step measured again: keep the latest reading
            slot = len(self._host_layer_steps)
            present = stats.present
            maxabs = foreach_norms(stats.grads, math.inf, self.device)
            counts = nonfinite_counts(stats.grads, maxabs, self.device)
            if stats.grad_scale is not None:
                maxabs = maxabs / stats.grad_scale
            pnorms = foreach_norms([local(dense(self.params[i].detach())) for i in present], 2.0, self.device)
            values = torch.stack([stats.norms, maxabs, pnorms], dim=1)
            if len(present) == len(self.params):
                self.layer_stats[slot].copy_(values)
                self.layer_nonfinite[slot].copy_(counts)
            elif present:
                index = torch.tensor(present, device=self.device)
                self.layer_stats[slot].index_copy_(0, index, values)
                self.layer_nonfinite[slot].index_copy_(0, index, counts)
            self._host_layer_steps.append((self.steps, present))

    def flush(self) -> None:
        """Copy buffered steps to the host (one device sync) and append them to the run."""
        with critical:
            self._flush()

    def _flush(self) -> None:
        if self.index is None:  # provisional: kept until registered
            return
        self._last_flush = time.monotonic()
        n = len(self._host_steps)
        if n == 0:
            return
        rows = self.rows[:n].cpu().numpy()
        m = len(self._host_layer_steps)
        stats = self.layer_stats[:m].cpu().numpy()
        counts = self.layer_nonfinite[:m].cpu().numpy()
        present = np.zeros((m, len(self.params)), dtype=bool)
        for k, (_, positions) in enumerate(self._host_layer_steps):
            present[k, positions] = True
        rank = self.session.layout["rank"]
        steps = steps_columns(self._host_steps, self._host_times, rows, self.index, rank)
        layers = layers_columns([s for s, _ in self._host_layer_steps], present, stats, counts,
                                self.layer_ids, self.index, rank)
        self._host_steps.clear()
        self._host_times.clear()
        self._host_layer_steps.clear()
        self.session.append(steps, layers)
        for table, columns in (("updates", self.updates.take_columns(self.layer_ids, self.index, rank)),
                               ("noise", noise_columns(self._noise, self.index, rank))):
            if columns is not None:
                self.session.writer.append(table, columns)
        self._noise = []
