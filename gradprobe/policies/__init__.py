"""Clip policies: the spec grammar, the math (one implementation for live clipping and replay), the registry.

``parse_spec("zclip:z=2.5+skip:sigma=6")`` gives a policy object; ``str(policy)``
gives back its canonical spec. ``policy.replay(norms)`` or
:func:`replay_run` tells what it would have done on a recorded run. This
package is framework-free (numpy only): each framework adapter brings its own
clip backend (:mod:`gradprobe.pytorch.clip`, :mod:`gradprobe.tensorflow.clip`),
and :func:`gradprobe.clipper` applies a policy in a PyTorch loop you own.
"""

from __future__ import annotations

from gradprobe.policies.base import ClipResult, Decision, GlobalPolicy, Gradients, LayerPolicy, Norms, Policy
from gradprobe.policies.global_norm import AutoClip, GlobalNorm, ZClip
from gradprobe.policies.history import History, Suggestion
from gradprobe.policies.layerwise import AGC, LayerNorm, ScaledValue, Sign, Value
from gradprobe.policies.ops import NumpyOps, Ops
from gradprobe.policies.registry import POLICIES, RECOMMENDED, strategies
from gradprobe.policies.replay import Replay
from gradprobe.policies.skip import Composite, Skip
from gradprobe.policies.spec import as_policy, parse_spec, usage
from gradprobe.policies.what_if import replay_run, replay_stream

__all__ = [
    "AGC", "AutoClip", "ClipResult", "Composite", "Decision", "GlobalNorm", "GlobalPolicy", "Gradients", "History",
    "LayerNorm", "LayerPolicy", "Norms", "NumpyOps", "Ops", "POLICIES", "Policy", "RECOMMENDED", "Replay",
    "ScaledValue", "Sign", "Skip", "Suggestion", "Value", "ZClip", "as_policy", "parse_spec", "replay_run",
    "replay_stream", "strategies", "usage",
]
