"""The torch backend of the policy math: device tensors, in-place gradient updates, no host reads.

Every operation stays on the device: Python numbers enter kernels as scalar
arguments, constants are created once per device and cached, and indexing
by a device value uses ``index_select`` (indexing with a 0-d tensor would read
it on the host). Gradients are updated in place with torch's fused
multi-tensor kernels (``torch._foreach_mul_``), as ``clip_grad_norm_`` does.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from gradprobe.errors import GradprobeError
from gradprobe.policies.ops import Ops
from gradprobe.pytorch.norms import dense, foreach_norms, global_norm

_UPCAST = (torch.float16, torch.bfloat16)


def _by_device(tensors: list[torch.Tensor]) -> dict[torch.device, list[int]]:
    groups: dict[torch.device, list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[t.device].append(i)
    return groups


def _strided(grads: list[torch.Tensor], what: str) -> None:
    for g in grads:
        if g.layout != torch.strided:
            raise GradprobeError(f"{what} does not support {g.layout} gradients; use global-norm or layer-norm")


class TorchOps(Ops):
    """Policy math on torch tensors on ``device`` (float32 scalars and state)."""

    unit_axis = 0

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self._consts: dict[str, torch.Tensor] = {}
        self._aranges: dict[int, torch.Tensor] = {}

    def const(self, value):
        key = repr(float(value))
        if key not in self._consts:
            self._consts[key] = torch.tensor(float(value), dtype=torch.float32, device=self.device)
        return self._consts[key]

    def flag(self, value):
        key = f"flag-{bool(value)}"
        if key not in self._consts:
            self._consts[key] = torch.tensor(bool(value), device=self.device)
        return self._consts[key]

    def full(self, n, value):
        return torch.full((n,), float(value), dtype=torch.float32, device=self.device)

    def arange(self, n):
        if n not in self._aranges:
            self._aranges[n] = torch.arange(n, dtype=torch.float32, device=self.device)
        return self._aranges[n]

    def where(self, cond, a, b):
        return torch.where(cond, a, b)

    def minimum(self, a, b):
        return torch.clamp(a, max=b) if isinstance(b, (int, float)) else torch.minimum(a, b)

    def maximum(self, a, b):
        return torch.clamp(a, min=b) if isinstance(b, (int, float)) else torch.maximum(a, b)

    def sqrt(self, x):
        return torch.sqrt(x)

    def isfinite(self, x):
        return torch.isfinite(x)

    def floor(self, x):
        return torch.floor(x)

    def sum(self, x):
        return torch.sum(x)

    def max(self, x):
        return torch.max(x) if x.numel() else self.const(0.0)

    def any(self, x):
        return torch.any(x)

    def sort(self, x):
        return torch.sort(x).values

    def take(self, x, index):
        return x.index_select(0, index.reshape(1).long()).reshape(())

    def stack(self, xs):
        return torch.stack(list(xs)) if len(xs) else torch.zeros(0, device=self.device)

    def global_norm(self, layer_norms):
        return global_norm(layer_norms)

    def numel(self, x):
        return x.numel()

    def norms(self, grads, ord):
        return foreach_norms([dense(g) for g in grads], ord, self.device)

    def scale(self, grads, s):
        for device, index in _by_device(grads).items():
            factor = s.to(device, non_blocking=True)
            strided = [grads[i] for i in index if grads[i].layout == torch.strided]
            if strided:
                torch._foreach_mul_(strided, factor)
            for i in index:
                if grads[i].layout != torch.strided:
                    grads[i].mul_(factor)
        return grads

    def scale_each(self, grads, s):
        factors = s.unbind()
        for device, index in _by_device(grads).items():
            strided = [i for i in index if grads[i].layout == torch.strided]
            if strided:
                torch._foreach_mul_([grads[i] for i in strided], [factors[i].to(device) for i in strided])
            for i in index:
                if grads[i].layout != torch.strided:
                    grads[i].mul_(factors[i].to(device))
        return grads

    def clamp_each(self, grads, bounds):
        _strided(grads, "value clipping")
        if grads:
            torch._foreach_clamp_min_(grads, [-b for b in bounds])
            torch._foreach_clamp_max_(grads, list(bounds))
        return grads

    def sign_where(self, grads, mask, magnitude):
        _strided(grads, "sign clipping")
        for i, g in enumerate(grads):
            g.copy_(torch.where(mask[i].to(g.device), torch.sign(g) * magnitude, g))
        return grads

    def unit_norms(self, x):
        _strided([x], "agc")
        x = x.detach()
        if x.dtype in _UPCAST:
            x = x.float()
        if x.dim() <= 1:
            return x.abs()
        axis = self.unit_axis % x.dim()
        return torch.linalg.vector_norm(x, dim=[d for d in range(x.dim()) if d != axis], keepdim=True)

    def mul(self, x, s):
        return x.mul_(s.to(x.device))


_OPS: dict[torch.device, TorchOps] = {}


def ops_for(device: torch.device | str) -> TorchOps:
    """The (cached) :class:`TorchOps` of ``device``."""
    device = torch.device(device)
    if device not in _OPS:
        _OPS[device] = TorchOps(device)
    return _OPS[device]
