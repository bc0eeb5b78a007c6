"""The PyTorch clip backend: a clip policy applied to gradients live, without host-device synchronisation.

:func:`apply_torch` is the building block the recorder uses: it takes the
per-layer norms the recorder already computed (so clipping adds no second
pass over the gradients for the norm-based policies), scales the gradients in
place with fused multi-tensor kernels, and returns every figure as a tensor
on the device. :class:`TorchClipper` wraps it for people who own their loop.

Skipping an update (``skip`` policies) without a host sync: the skipped
step's gradients are multiplied by 0 on the device, and the skip flag is
returned. A zero gradient alone does not freeze the parameters (momentum,
weight decay and Adam's moments still move them), so the optimizer step must
be prevented too; :func:`step_unless_skipped` does that:

* fused optimizers (``fused=True``: Adam, AdamW, SGD...) receive the flag as
  ``found_inf``, the same channel ``torch.amp.GradScaler`` uses: the fused
  kernel skips the whole update (parameters, moments, step count) on the
  device, no sync;
* other optimizers: the flag is read on the host once per step and
  ``optimizer.step`` is not called when it is set (one sync per step, the
  same one ``GradScaler.step`` performs).

:class:`TorchOps` is the torch implementation of :class:`~gradprobe.policies.ops.Ops`: every
operation stays on the device (Python numbers enter kernels as scalar arguments, constants are
created once per device and cached, and indexing by a device value uses ``index_select``, since
indexing with a 0-d tensor would read it on the host). Gradients are updated in place with torch's
fused multi-tensor kernels (``torch._foreach_mul_``), as ``clip_grad_norm_`` does.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Sequence

import torch

from gradprobe.errors import GradprobeError
from gradprobe.policies.base import ClipResult, Gradients, Policy, State
from gradprobe.policies.ops import Ops
from gradprobe.policies.spec import as_policy
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

    def isnan(self, x):
        return torch.isnan(x)

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


def init_state(policy: Policy, device: torch.device | str) -> State:
    """The policy's initial state, as tensors on ``device``."""
    return policy.init_state(ops_for(device))


def apply_torch(
    policy: Policy,
    state: State,
    grads: Sequence[torch.Tensor],
    layer_norms: torch.Tensor | None = None,
    global_norm: torch.Tensor | None = None,
    params: Sequence[torch.Tensor] | None = None,
) -> tuple[ClipResult, State]:
    """Clip ``grads`` in place with ``policy``; return what happened and the new state.

    ``grads``: the gradients (``p.grad``), unscaled (after AMP unscaling).
    ``layer_norms``: their L2 norms as a float32 vector on the state's device,
    computed with :func:`gradprobe.pytorch.norms.foreach_norms` (computed here
    when omitted). ``global_norm``: their global L2 norm (default: from
    ``layer_norms``). ``params``: the parameters, same order (``agc`` needs
    them). ``state`` comes from :func:`init_state` or the previous call.

    Nothing is read back to the host: the result's fields are 0-d tensors on
    the norms' device.
    """
    grads = list(grads)
    if layer_norms is None:
        if not grads:
            raise GradprobeError("apply_torch needs gradients or their layer norms")
        layer_norms = ops_for(grads[0].device).norms(grads, 2.0)
    ops = ops_for(layer_norms.device)
    with torch.no_grad():
        if global_norm is None:
            global_norm = ops.global_norm(layer_norms)
        batch = Gradients(grads, layer_norms, global_norm, list(params) if params is not None else None)
        outcome, _, state = policy.apply(ops, state, batch)
    return outcome, state


def flag_skip_on_device(optimizer: torch.optim.Optimizer, skipped: torch.Tensor) -> tuple[bool, Any]:
    """Hand ``skipped`` to a fused optimizer as ``found_inf`` (merged with a ``GradScaler``'s flag).

    Returns ``(True, previous found_inf)`` when the optimizer skips on the
    device, to be put back with :func:`restore_found_inf` after its step, and
    ``(False, None)`` for optimizers that cannot (non-fused ones).
    """
    if not getattr(optimizer, "_step_supports_amp_scaling", False):
        return False, None
    previous = getattr(optimizer, "found_inf", None)
    flag = skipped.float()
    optimizer.found_inf = flag if previous is None else torch.maximum(previous, flag.to(previous.device))
    return True, previous


def restore_found_inf(optimizer: torch.optim.Optimizer, previous: Any) -> None:
    """Undo :func:`flag_skip_on_device`."""
    if previous is None:
        optimizer.__dict__.pop("found_inf", None)
    else:
        optimizer.found_inf = previous


def step_unless_skipped(optimizer: torch.optim.Optimizer, skipped: torch.Tensor | None, *args: Any,
                        **kwargs: Any) -> Any:
    """Run ``optimizer.step(*args, **kwargs)`` unless ``skipped`` (a boolean tensor) is true.

    Fused optimizers get the flag as ``found_inf`` and skip on the device with
    no host sync (combined with a ``GradScaler``'s own flag when one is set);
    others read the flag once on the host. ``skipped=None`` always steps.
    """
    if skipped is None:
        return optimizer.step(*args, **kwargs)
    on_device, previous = flag_skip_on_device(optimizer, skipped)
    if on_device:
        try:
            return optimizer.step(*args, **kwargs)
        finally:
            restore_found_inf(optimizer, previous)
    if bool(skipped):
        return None
    return optimizer.step(*args, **kwargs)


class TorchClipper:
    """A clip policy with its state, for a training loop you own.

    Example::

        clip = gradprobe.clipper("zclip:z=2.5+skip:sigma=6")
        for x, y in data:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            norm, scale = clip(model.parameters())   # tensors, no host sync
            clip.step(opt)                           # opt.step() unless skipped

    ``clip.last`` holds the full :class:`~gradprobe.policies.base.ClipResult`
    of the latest call. Use one clipper per optimizer: its state (AutoClip
    history, ZClip statistics, skip window) follows one stream of steps.
    """

    def __init__(self, policy: Policy | str):
        self.policy = as_policy(policy)
        self.state: State | None = None
        self.device: torch.device | None = None
        self.last: ClipResult | None = None

    def __call__(self, parameters: Iterable[torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip the gradients of ``parameters`` (any iterable, read once); return (pre-clip norm, scale)."""
        params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
        params = [p for p in params if p.grad is not None]
        if not params:
            self.last = None
            device = self.device or torch.device("cpu")
            ops = ops_for(device)
            return ops.const(0.0), ops.const(1.0)
        result = self.clip([p.grad for p in params], params=params)
        return result.norm, result.scale

    def clip(self, grads: Sequence[torch.Tensor], layer_norms: torch.Tensor | None = None,
             global_norm: torch.Tensor | None = None, params: Sequence[torch.Tensor] | None = None) -> ClipResult:
        """Clip ``grads`` in place (see :func:`apply_torch`), keeping the state; return the result."""
        grads = list(grads)
        if self.state is None:
            self.device = layer_norms.device if layer_norms is not None else grads[0].device
            self.state = init_state(self.policy, self.device)
        if layer_norms is None:
            layer_norms = ops_for(self.device).norms(grads, 2.0)
        self.last, self.state = apply_torch(self.policy, self.state, grads, layer_norms, global_norm, params)
        return self.last

    def step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        """``optimizer.step(*args, **kwargs)`` unless the latest call skipped the update."""
        return step_unless_skipped(optimizer, self.last.skipped if self.last is not None else None, *args, **kwargs)
