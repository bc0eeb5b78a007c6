"""The one list of clip policies. The spec grammar, ``gradprobe recommend``'s strategies (and the
CLI's ``--strategy`` choices), ``gradprobe tune``'s candidates and ``gradprobe apply``'s source
writers all read it: adding a policy means writing its class, listing it here, giving it framework
math if it needs new ops, and testing it."""

from __future__ import annotations

from gradprobe.policies.base import Policy
from gradprobe.policies.global_norm import AutoClip, GlobalNorm, ZClip
from gradprobe.policies.layerwise import AGC, LayerNorm, ScaledValue, Sign, Value
from gradprobe.policies.skip import Skip

# Every policy by spec name, in the order error messages list them.
POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (GlobalNorm, LayerNorm, Value, ScaledValue, Sign, AutoClip, ZClip, AGC, Skip)
}

# The policies ``gradprobe recommend`` suggests, in the order it lists them (and tune tries them).
RECOMMENDED: tuple[type[Policy], ...] = (GlobalNorm, AutoClip, ZClip, AGC, Value, LayerNorm)


def strategies() -> tuple[str, ...]:
    """The names of ``gradprobe recommend``'s strategies, in order."""
    return tuple(cls.strategy for cls in RECOMMENDED if cls.strategy is not None)


def by_strategy(name: str) -> type[Policy]:
    """The policy a strategy name stands for (KeyError for an unknown name)."""
    return {cls.strategy: cls for cls in RECOMMENDED}[name]
