"""Per-parameter gradient statistics computed on the gradients' device, without host syncs.

Tensors are grouped by device and dtype and reduced with torch's fused
multi-tensor kernels (``torch._foreach_norm``), the same ones
``torch.nn.utils.clip_grad_norm_`` uses. Half-precision gradients are reduced
in float32 so large values cannot overflow; float64 and complex gradients are
reduced in their own precision. Results are float32 vectors on ``device``.
"""

from __future__ import annotations

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
    for (_, dtype), index in groups.items():
        members = [tensors[i] for i in index]
        if dtype in _UPCAST:
            norms = torch._foreach_norm(members, ord, dtype=torch.float32)
        else:
            norms = torch._foreach_norm(members, ord)
        stacked = torch.stack(norms).to(device=device, dtype=torch.float32, non_blocking=True)
        if out is None:
            return stacked
        out[torch.tensor(index, device=device)] = stacked
    return out


def nonfinite_counts(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Number of NaN/Inf elements of each tensor, as an int64 vector on ``device``."""
    if not tensors:
        return torch.zeros(0, dtype=torch.int64, device=device)
    counts = [t.numel() - torch.isfinite(t).sum() for t in tensors]
    return torch.stack([c.to(device, non_blocking=True) for c in counts])


def global_norm(layer_norms: torch.Tensor) -> torch.Tensor:
    """The L2 norm of all gradients together, from their per-tensor L2 norms."""
    return torch.linalg.vector_norm(layer_norms)
