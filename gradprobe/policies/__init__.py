"""Clip policies: the spec grammar, the math (one implementation for live clipping and replay), appliers.

``parse_spec("zclip:z=2.5+skip:sigma=6")`` gives a policy object; ``str(policy)``
gives back its canonical spec. ``policy.replay(norms)`` or
:func:`replay_run` tells what it would have done on a recorded run;
:func:`clipper` applies it to PyTorch gradients in a loop you own. Torch is
imported only when a torch applier is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gradprobe.policies.base import ClipResult, Decision, GlobalPolicy, Gradients, LayerPolicy, Norms, Policy
from gradprobe.policies.global_norm import AutoClip, GlobalNorm, ZClip
from gradprobe.policies.layerwise import AGC, LayerNorm, ScaledValue, Sign, Value
from gradprobe.policies.ops import NumpyOps, Ops
from gradprobe.policies.replay import Replay, replay_run
from gradprobe.policies.skip import Composite, Skip
from gradprobe.policies.spec import POLICIES, parse_spec, usage

if TYPE_CHECKING:
    from gradprobe.policies.torch_apply import TorchClipper


def clipper(spec: "str | Policy") -> "TorchClipper":
    """A PyTorch clipper for ``spec``: ``norm, scale = clipper(model.parameters())``.

    The spec is checked immediately (a bad spec raises
    :class:`~gradprobe.errors.GradprobeError` before any training). See
    :class:`~gradprobe.policies.torch_apply.TorchClipper`.
    """
    policy = parse_spec(spec) if isinstance(spec, str) else spec
    from gradprobe.policies.torch_apply import TorchClipper

    return TorchClipper(policy)


__all__ = [
    "AGC", "AutoClip", "ClipResult", "Composite", "Decision", "GlobalNorm", "GlobalPolicy", "Gradients", "LayerNorm",
    "LayerPolicy", "Norms", "NumpyOps", "Ops", "POLICIES", "Policy", "Replay", "ScaledValue", "Sign", "Skip",
    "Value", "ZClip", "clipper", "parse_spec", "replay_run", "usage",
]
