"""What a replay of a clip policy on recorded norms gives (:class:`Replay`), and the inputs it checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from gradprobe.errors import GradprobeError

if TYPE_CHECKING:
    import pandas as pd

# The per-layer inputs a replay may need: the ``Policy.replay`` argument and the recorded column.
LAYER_INPUTS = {"layer_norms": "norm", "layer_maxabs": "maxabs", "param_norms": "param_norm"}


@dataclass(frozen=True)
class Replay:
    """Per-step outcome of a policy replayed on recorded pre-clip norms.

    Arrays, one entry per step: ``steps`` (step index), ``norm`` (recorded
    pre-clip global L2 norm), ``threshold`` (NaN: none in force), ``scale``
    (factor applied, 0 when skipped), ``post_norm`` (global norm after
    clipping), ``clipped`` and ``skipped`` (booleans), ``skip_threshold``
    (NaN: no skip policy or not armed), ``evaluated`` (False where the step
    lacks the statistics the policy needs: value fields are NaN there).
    ``exact`` is False when the replay is an estimate from per-layer summaries
    (see each policy's docstring).
    """

    policy: str
    steps: np.ndarray
    norm: np.ndarray
    threshold: np.ndarray
    scale: np.ndarray
    post_norm: np.ndarray
    clipped: np.ndarray
    skipped: np.ndarray
    skip_threshold: np.ndarray
    evaluated: np.ndarray
    exact: bool

    @classmethod
    def build(cls, policy: str, steps: Sequence[int] | None, norm: Any, threshold: Any, scale: Any, post_norm: Any,
              clipped: Any, skipped: Any, skip_threshold: Any, evaluated: Any, exact: bool) -> "Replay":
        """Assemble a replay from per-step sequences, with the canonical dtypes."""
        n = len(norm)
        f32 = lambda a: np.asarray(a, dtype=np.float32).reshape(n)  # noqa: E731
        flag = lambda a: np.asarray(a, dtype=bool).reshape(n)  # noqa: E731
        index = np.arange(n, dtype=np.int64) if steps is None else np.asarray(steps, dtype=np.int64).reshape(n)
        evaluated = flag(evaluated)
        unknown = lambda a: np.where(evaluated, f32(a), np.float32(np.nan))  # noqa: E731
        return cls(policy, index, f32(norm), unknown(threshold), unknown(scale), unknown(post_norm),
                   flag(clipped) & evaluated, flag(skipped) & evaluated, unknown(skip_threshold), evaluated, exact)

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def clipped_fraction(self) -> float:
        """Fraction of the evaluated steps that were clipped (0.0 when none was evaluated)."""
        n = int(self.evaluated.sum())
        return float(self.clipped.sum()) / n if n else 0.0

    @property
    def skipped_fraction(self) -> float:
        """Fraction of the evaluated steps that were skipped."""
        n = int(self.evaluated.sum())
        return float(self.skipped.sum()) / n if n else 0.0

    @property
    def mean_scale(self) -> float:
        """Mean factor applied over the evaluated steps (1.0: never clipped; NaN when none evaluated)."""
        values = self.scale[self.evaluated]
        return float(np.mean(values)) if len(values) else float("nan")

    @property
    def mean_scale_when_clipped(self) -> float:
        """Mean factor over the clipped steps only: how hard it clips when it does (NaN: never)."""
        values = self.scale[self.clipped]
        return float(np.mean(values)) if len(values) else float("nan")

    def to_frame(self) -> pd.DataFrame:
        """The per-step arrays as a DataFrame indexed by step."""
        import pandas as pd

        columns = ("norm", "threshold", "scale", "post_norm", "clipped", "skipped", "skip_threshold", "evaluated")
        return pd.DataFrame({c: getattr(self, c) for c in columns}, index=pd.Index(self.steps, name="step"))


def layer_inputs(policy: str, needs: frozenset[str], n: int, layer_norms: Any, layer_maxabs: Any, param_norms: Any,
                 numel: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validated per-layer replay inputs: norms, maxabs, param norms (steps x layers), numel, evaluated rows.

    ``policy`` names the policy in errors; ``needs`` lists the arguments it
    cannot do without. A step is evaluated when its row of ``layer_norms`` is
    not all NaN; inside an evaluated row a NaN (that parameter had no
    gradient) counts as zero.
    """
    given = {"layer_norms": layer_norms, "layer_maxabs": layer_maxabs, "param_norms": param_norms, "numel": numel}
    missing = [name for name in sorted(needs) if given[name] is None]
    if missing:
        raise GradprobeError(f"{policy}: replay needs {', '.join(missing)}")
    norms = np.asarray(layer_norms, dtype=np.float32)
    if norms.ndim != 2 or norms.shape[0] != n:
        raise GradprobeError(f"{policy}: layer_norms must have shape (steps={n}, layers), got {norms.shape}")
    evaluated = ~np.isnan(norms).all(axis=1)

    def grid(values: Any, name: str) -> np.ndarray:
        if values is None:
            return np.zeros_like(norms)
        array = np.asarray(values, dtype=np.float32)
        if array.shape != norms.shape:
            raise GradprobeError(f"{policy}: {name} must have the shape of layer_norms {norms.shape}")
        return np.nan_to_num(array, nan=0.0)

    sizes = np.ones(norms.shape[1]) if numel is None else np.asarray(numel, dtype=np.float64)
    if sizes.shape != (norms.shape[1],):
        raise GradprobeError(f"{policy}: numel must have one entry per layer ({norms.shape[1]})")
    return (np.nan_to_num(norms, nan=0.0), grid(layer_maxabs, "layer_maxabs"), grid(param_norms, "param_norms"),
            sizes, evaluated)
