"""Combining the ranks of a sharded run (FSDP) into the statistics of the full gradients.

Each rank recorded its shards: per sharded parameter the L2 norm, max-abs,
non-finite count and parameter norm of the part it holds, and per step the
L2 norm of its part of the gradient (replicated parameters counted on rank 0
only). Squares add up across ranks, so the full L2 norms are
``sqrt(sum over ranks of norm**2)``; max-abs is the largest over ranks and
counts add. Everything else about a step (clip scale and threshold, loss,
skip flag, time) comes from the lowest rank; replicated parameters' rows too.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

_STEP_KEYS = ["optimizer", "step"]
_LAYER_KEYS = ["optimizer", "step", "layer"]


def is_sharded(meta: Mapping[str, Any]) -> bool:
    """Whether the run recorded sharded parameters."""
    world = meta.get("world")
    return isinstance(world, Mapping) and bool(world.get("sharded"))


def _root_sum_squares(values: pd.Series) -> float:
    return float(np.sqrt(np.square(values.to_numpy(dtype=np.float64)).sum()))


def _lowest_rank(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return frame.sort_values("rank", kind="stable").drop_duplicates(keys, keep="first")


def combine_steps(steps: pd.DataFrame, meta: Mapping[str, Any]) -> pd.DataFrame:
    """One row per optimizer step with the full gradient's global norms (pre- and post-clip)."""
    if not is_sharded(meta) or steps.empty:
        return steps
    out = _lowest_rank(steps, _STEP_KEYS).set_index(_STEP_KEYS)
    grouped = steps.groupby(_STEP_KEYS)
    for column in ("global_norm", "global_norm_post"):
        out[column] = grouped[column].agg(_root_sum_squares).astype(steps[column].dtype)
    return out.reset_index()[steps.columns].sort_values(_STEP_KEYS, kind="stable").reset_index(drop=True)


def combine_layers(layers: pd.DataFrame, meta: Mapping[str, Any]) -> pd.DataFrame:
    """One row per parameter per sampled step, sharded parameters' shards combined."""
    if not is_sharded(meta) or layers.empty:
        return layers
    sharded_ids = [layer["id"] for layer in meta.get("layers", []) if layer.get("sharded")]
    is_shard = layers["layer"].isin(sharded_ids)
    shards, whole = layers[is_shard], _lowest_rank(layers[~is_shard], _LAYER_KEYS)
    grouped = shards.groupby(_LAYER_KEYS)
    combined = _lowest_rank(shards, _LAYER_KEYS).set_index(_LAYER_KEYS)
    combined["norm"] = grouped["norm"].agg(_root_sum_squares)
    combined["param_norm"] = grouped["param_norm"].agg(_root_sum_squares)
    combined["maxabs"] = grouped["maxabs"].agg(lambda v: v.to_numpy(dtype=np.float64).max())  # NaN wins
    combined["nonfinite"] = grouped["nonfinite"].sum()
    combined = combined.reset_index()[layers.columns].astype(layers.dtypes.to_dict())
    frame = pd.concat([combined, whole], ignore_index=True)
    return frame.sort_values(["optimizer", "step"], kind="stable").reset_index(drop=True)
