"""Which PyTorch code carries out a clip policy, and what each kind of clip call returns.

A policy that names a ``torch.nn.utils`` function (:meth:`~gradprobe.policies.Policy.torch_call`:
``global-norm`` is ``clip_grad_norm_``, ``value`` is ``clip_grad_value_``) becomes a plain call
of it, so the patched script needs no gradprobe at run time; every other policy becomes a
``gradprobe.clipper`` object, created once after its optimizer and called before each step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gradprobe.policies import Policy
from gradprobe.source_patch.syntax import number_code

# The kinds of clip call found before a step, or emitted there.
CLIP_NORM = "clip_grad_norm_"
CLIP_VALUE = "clip_grad_value_"
CLIPPER = "clipper"

# What each kind returns: the pre-clip total norm, nothing, or (norm, scale).
RETURNS = {CLIP_NORM: "norm", CLIP_VALUE: "nothing", CLIPPER: "norm and scale"}

# The numeric arguments of the torch clip functions after the parameters, in order, and their defaults.
SIGNATURES = {CLIP_NORM: ("max_norm", "norm_type"), CLIP_VALUE: ("clip_value",)}
DEFAULTS = {"norm_type": 2.0}

TORCH_UTILS = "torch.nn.utils"
INF_CODE = 'float("inf")'
INF_SPELLINGS = {'float("inf")', "float('inf')", "math.inf", "torch.inf", "np.inf", "numpy.inf", '"inf"', "'inf'"}


@dataclass(frozen=True)
class TorchClip:
    """How a policy is written before a PyTorch optimizer step: the kind of call and, for a torch
    function, its keyword arguments."""

    kind: str
    policy: Policy
    arguments: dict[str, float] = field(default_factory=dict)

    @property
    def skips(self) -> bool:
        """Whether the step itself must go through the clipper (the policy may skip updates)."""
        return self.policy.can_skip

    def call_code(self, function: str, params: str) -> str:
        """The clip call on ``params``; ``function`` spells the torch function or the clipper variable."""
        values = "".join(f", {key}={value_code(value)}" for key, value in self.arguments.items())
        return f"{function}({params}{values})"


def value_code(value: float) -> str:
    """A numeric argument as code (``float("inf")`` for infinity)."""
    return INF_CODE if value == math.inf else number_code(value)


def torch_clip(policy: Policy) -> TorchClip:
    """The PyTorch form of ``policy``."""
    call = policy.torch_call()
    if call is None:
        return TorchClip(CLIPPER, policy)
    return TorchClip(call[0], policy, dict(call[1]))
