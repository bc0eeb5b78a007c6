"""PyTorch side of :func:`gradprobe.task_gradients`: per-task gradients with ``torch.autograd.grad``."""

from __future__ import annotations

import sys
from typing import Any, Mapping

import numpy as np
import torch

from gradprobe.errors import GradprobeError

def shared_params(shared: Any) -> list[torch.Tensor]:
    """The trainable tensors of ``shared`` (a module or an iterable of tensors), each once."""
    if isinstance(shared, torch.nn.Module):
        params = list(shared.parameters())
    elif isinstance(shared, torch.Tensor):
        params = [shared]
    else:
        try:
            params = list(shared)
        except TypeError:
            raise GradprobeError("task_gradients: shared must be a torch.nn.Module or a list of its "
                                 f"parameters, not {type(shared).__name__}") from None
        if not all(isinstance(p, torch.Tensor) for p in params):
            raise GradprobeError("task_gradients: shared must hold tensors (parameters)")
    params = list({id(p): p for p in params if p.requires_grad}.values())
    if not params:
        raise GradprobeError("task_gradients: shared has no parameter that requires grad")
    return params


def check(losses: Mapping[str, Any], shared: Any, tape: Any) -> None:
    """Raise a one-line error when the losses or the shared parameters cannot be used."""
    if tape is not None:
        raise GradprobeError("task_gradients: tape is for TensorFlow; PyTorch losses need none")
    for name, loss in losses.items():
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise GradprobeError(f"task_gradients: the loss of task {name!r} must be a scalar tensor")
        if not loss.requires_grad:
            raise GradprobeError(f"task_gradients: the loss of task {name!r} does not require grad "
                                 "(computed under torch.no_grad(), or already backpropagated?)")
    shared_params(shared)


def gram(losses: Mapping[str, torch.Tensor], shared: Any, tape: Any = None) -> np.ndarray:
    """``G[i, j] = <g_i, g_j>``, ``g_i`` the gradient of task i's loss on the shared parameters.

    The graph is kept (``retain_graph=True``) for the script's own ``backward()``;
    products are accumulated in float32 (float64 for float64 parameters).
    """
    params = shared_params(shared)
    dtype = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
    rows = []
    for loss in losses.values():
        grads = torch.autograd.grad(loss.reshape(()), params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
                               for g, p in zip(grads, params)]))
    vectors = torch.stack(rows)
    return (vectors @ vectors.T).cpu().numpy()


def active_session() -> Any | None:
    """The session of the PyTorch recorder recording in this process (``None`` when nothing records)."""
    module = sys.modules.get("gradprobe.pytorch.recorder")
    recorder = module.active_recorder() if module is not None else None
    return recorder.session if recorder is not None else None
