"""Per-parameter gradient statistics computed on the gradients' device, without host syncs.

Tensors are grouped by device and dtype and reduced with torch's fused
multi-tensor kernels (``torch._foreach_norm``), the same ones
``torch.nn.utils.clip_grad_norm_`` uses. Half-precision gradients are reduced
in float32 so large values cannot overflow; float64 and complex gradients are
reduced in their own precision. Results are float32 vectors on ``device``.

On the CPU, torch's max-abs norm is an order of magnitude slower than its L2
norm, so max-abs is taken there from ``torch.aminmax`` (one pass per tensor),
and non-finite elements are counted only in the tensors whose max-abs is not
finite (a tensor with a finite max-abs has none; that check is a host read,
free on the CPU, so accelerators count in every tensor instead).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

_UPCAST = (torch.float16, torch.bfloat16)


def dense(t: torch.Tensor) -> torch.Tensor:
    """The stored values of a gradient: the non-zeros of a sparse one, else the tensor itself."""
    if t.layout == torch.sparse_coo:
        return t.coalesce().values()
    if t.layout != torch.strided:
        return t.to_dense()
    return t


def _groups(tensors: list[torch.Tensor]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[(t.device, t.dtype)].append(i)
    return groups


def foreach_norms(tensors: list[torch.Tensor], ord: float, device: torch.device) -> torch.Tensor:
    """Norms of order ``ord`` (2 or inf) of each tensor, as a float32 vector on ``device``."""
    if not tensors:
        return torch.zeros(0, device=device)
    groups = _groups(tensors)
    out = None if len(groups) == 1 else torch.empty(len(tensors), device=device)
    for (tensor_device, dtype), index in groups.items():
        members = [tensors[i] for i in index]
        if ord == math.inf:  # the max of an empty tensor is undefined; a zero-size gradient's is 0
            members = [t if t.numel() else t.new_zeros(1) for t in members]
        if ord == math.inf and tensor_device.type == "cpu" and not dtype.is_complex:
            norms = [torch.maximum(high.float(), -low.float()) for low, high in map(torch.aminmax, members)]
        elif dtype in _UPCAST:
            norms = torch._foreach_norm(members, ord, dtype=torch.float32)
        else:
            norms = torch._foreach_norm(members, ord)
        stacked = torch.stack(norms).to(device=device, dtype=torch.float32, non_blocking=True)
        if out is None:
            return stacked
        out[torch.tensor(index, device=device)] = stacked
    return out


def nonfinite_counts(tensors: list[torch.Tensor], max_abs: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Number of NaN/Inf elements of each tensor, as an int64 vector on ``device``.

    ``max_abs``: the tensors' max-abs norms (from :func:`foreach_norms`).
    """
    counts = torch.zeros(len(tensors), dtype=torch.int64, device=device)
    if not tensors:
        return counts
    if all(t.device.type == "cpu" for t in tensors) and max_abs.device.type == "cpu":
        suspects = torch.nonzero(~torch.isfinite(max_abs)).flatten().tolist()
    else:
        suspects = range(len(tensors))
    for i in suspects:
        t = tensors[i]
        counts[i] = (t.numel() - torch.isfinite(t).sum()).to(device, non_blocking=True)
    return counts


def global_norm(layer_norms: torch.Tensor) -> torch.Tensor:
    """The L2 norm of all gradients together, from their per-tensor L2 norms."""
    return torch.linalg.vector_norm(layer_norms)
