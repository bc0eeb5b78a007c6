"""Numbers every renderer shows: global-norm statistics and per-layer norm percentiles."""

from __future__ import annotations

import numpy as np
import pandas as pd

from gradprobe.store import Run


def global_norm_stats(steps: pd.DataFrame) -> dict[str, float]:
    """Median, 95th percentile and maximum of the finite pre-clip global norms, and counts."""
    norms = steps["global_norm"].to_numpy(dtype=np.float64)
    finite = norms[np.isfinite(norms)]
    pick = (lambda f: float(f(finite))) if finite.size else (lambda f: float("nan"))
    return {
        "steps": int(len(steps)),
        "median": pick(np.median),
        "p95": pick(lambda a: np.percentile(a, 95)),
        "max": pick(np.max),
        "nonfinite_steps": int((~np.isfinite(norms)).sum()),
        "skipped_steps": int(steps["skipped"].sum()),
    }


def layer_stats(run: Run) -> pd.DataFrame:
    """One row per layer in depth order: name, numel, median/p95/max L2 norm, non-finite count."""
    table = run.layer_table[["name", "numel", "group"]].copy()
    layers = run.layers
    finite = layers[np.isfinite(layers["norm"])]
    grouped = finite.groupby("layer")["norm"]
    table["median"] = grouped.median()
    table["p95"] = grouped.quantile(0.95)
    table["max"] = grouped.max()
    table["nonfinite"] = layers.groupby("layer")["nonfinite"].sum()
    table["records"] = layers.groupby("layer").size()
    return table.fillna({"nonfinite": 0, "records": 0}).astype({"nonfinite": "int64", "records": "int64"})
