"""The finding record every detector returns, and its JSON form.

A finding is one problem seen in one optimizer's stream of steps::

    {"kind": "explosion", "severity": "warning", "layers": ["fc.weight"],
     "steps": [first, last], "evidence": {...numbers...}, "advice": "..."}

``evidence`` holds numbers only (and lists of numbers); it always contains
``optimizer``, the index of the optimizer whose steps the finding is about.
Spike and non-finite findings of a run that recorded its batches also carry
``batches``: which samples went into their steps (:mod:`gradprobe.analysis.batch_blame`).
Severities, from least to most urgent: ``info`` (worth knowing, no action
needed), ``warning`` (likely hurts training), ``critical`` (training is
broken or about to be).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("explosion", "vanishing", "spike", "nonfinite", "dead_layer", "clip_saturation", "imbalance",
         "task_conflict", "task_imbalance", "rank_divergence", "clip_after_step", "too_few_steps", "stalled_layer",
         "update_ratio", "frozen_layer", "decay_only", "update_spike", "loss_divided_twice",
         "failed_to_learn")
SEVERITIES = ("info", "warning", "critical")


@dataclass
class Finding:
    """One diagnosed problem: what, how bad, where (layers, steps), the numbers, and what to do."""

    kind: str
    severity: str
    layers: list[str]
    steps: tuple[int, int]
    evidence: dict[str, Any] = field(default_factory=dict)
    advice: str = ""
    batches: list[dict[str, Any]] = field(default_factory=list)  # the data of its steps (batch_blame)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown finding kind {self.kind!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")

    @property
    def rank(self) -> int:
        """0 for info, 1 for warning, 2 for critical."""
        return SEVERITIES.index(self.severity)

    def to_dict(self) -> dict[str, Any]:
        """The finding as plain JSON types (non-finite numbers become ``None``)."""
        return {
            "kind": self.kind,
            "severity": self.severity,
            "layers": [str(name) for name in self.layers],
            "steps": [int(self.steps[0]), int(self.steps[1])],
            "evidence": {str(k): json_number(v) for k, v in self.evidence.items()},
            "advice": self.advice,
            **({"batches": plain_json(self.batches)} if self.batches else {}),
        }


def json_number(value: Any) -> Any:
    """A number (or list of numbers) as plain JSON: numpy scalars unwrapped, NaN/Inf as ``None``."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_number(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def plain_json(value: Any) -> Any:
    """``value`` as plain JSON types, recursively (numpy unwrapped, NaN/Inf as ``None``)."""
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    return json_number(value)


def worst(severities: list[str]) -> str:
    """The most urgent of ``severities``."""
    return max(severities, key=SEVERITIES.index)


def sentence(text: str) -> str:
    """``text`` with its first letter in upper case."""
    return text[:1].upper() + text[1:]


def round3(value: float) -> str:
    """``value`` to 3 significant digits, as clip specs are written (``0.25``, ``1.3e+03``)."""
    return f"{float(value):.3g}"


def script_name(stream: Any) -> str:
    """The recorded script's file name, for the commands a finding's advice gives (``train.py``)."""
    script = (getattr(stream, "run_meta", None) or {}).get("script")
    return Path(script).name if script else "train.py"


def clip_command(stream: Any, spec: str) -> str:
    """The command that reruns the recorded script with ``spec`` applied: ``gradprobe run --clip ...``."""
    return f"`gradprobe run --clip {spec} {script_name(stream)}`"


def times(factor: float) -> str:
    """A ratio for prose: ``12x``, ``3.4x``, ``6.8e+11x``."""
    if not math.isfinite(factor):
        return "inf x"
    if factor >= 1e5:
        return f"{factor:.2g}x"
    return f"{factor:,.0f}x" if factor >= 10 else f"{factor:.2g}x"
