"""Which PyTorch code carries out a clip policy, and what each kind of clip call returns.

``global-norm`` and ``value`` become plain ``torch.nn.utils.clip_grad_norm_``
/ ``clip_grad_value_`` calls, so the patched script needs no gradprobe at run
time; every other policy becomes a ``gradprobe.clipper`` object, created once
after its optimizer and called before each step.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradprobe.policies import GlobalNorm, Policy, Value
from gradprobe.source_patch.syntax import number_code

# The kinds of clip call found before a step, or emitted there.
CLIP_NORM = "clip_grad_norm_"
CLIP_VALUE = "clip_grad_value_"
CLIPPER = "clipper"

# What each kind returns: the pre-clip total norm, nothing, or (norm, scale).
RETURNS = {CLIP_NORM: "norm", CLIP_VALUE: "nothing", CLIPPER: "norm and scale"}

TORCH_UTILS = "torch.nn.utils"
INF_CODE = 'float("inf")'
INF_SPELLINGS = {'float("inf")', "float('inf')", "math.inf", "torch.inf", "np.inf", "numpy.inf", '"inf"', "'inf'"}


@dataclass(frozen=True)
class TorchClip:
    """How a policy is written before a PyTorch optimizer step."""

    kind: str
    policy: Policy

    @property
    def skips(self) -> bool:
        """Whether the step itself must go through the clipper (the policy may skip updates)."""
        return self.policy.can_skip

    def call_code(self, function: str, params: str) -> str:
        """The clip call on ``params``; ``function`` spells the torch function or the clipper variable."""
        policy = self.policy
        if self.kind == CLIP_NORM:
            assert isinstance(policy, GlobalNorm)
            norm = f", norm_type={INF_CODE}" if policy.norm == "inf" else ""
            return f"{function}({params}, max_norm={number_code(policy.max)}{norm})"
        if self.kind == CLIP_VALUE:
            assert isinstance(policy, Value)
            return f"{function}({params}, clip_value={number_code(policy.max)})"
        return f"{function}({params})"


def torch_clip(policy: Policy) -> TorchClip:
    """The PyTorch form of ``policy``."""
    if isinstance(policy, GlobalNorm):
        return TorchClip(CLIP_NORM, policy)
    if isinstance(policy, Value):
        return TorchClip(CLIP_VALUE, policy)
    return TorchClip(CLIPPER, policy)
