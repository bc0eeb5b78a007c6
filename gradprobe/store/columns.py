"""Turning an adapter's flushed host arrays into the columns of the ``steps`` and ``layers`` tables.

Every framework adapter keeps one optimizer's statistics in device buffers and
copies them to the host every flush; these functions give the copied arrays
the layout of :mod:`gradprobe.store.schema`, so that all adapters write
identical runs.
"""

from __future__ import annotations

import numpy as np

# Columns of an adapter's per-step buffer, in order.
STEP_COLUMNS = ("global_norm", "global_norm_post", "clip_scale", "clip_threshold", "loss", "skipped")

# Per-layer statistics of a layer sample, in order (the non-finite count is kept apart: it is an integer).
LAYER_STATS = ("norm", "maxabs", "param_norm")


def steps_columns(steps: np.ndarray, times: np.ndarray, rows: np.ndarray, optimizer: int,
                  rank: int) -> dict[str, np.ndarray]:
    """The ``steps`` table of one flush.

    ``rows`` is ``[n, len(STEP_COLUMNS)]`` float32, one row per step in
    ``steps`` (int64) taken at ``times`` (Unix seconds).
    """
    n = len(steps)
    columns = {"step": np.asarray(steps, dtype=np.int64), "time": np.asarray(times, dtype=np.float64)}
    columns.update({name: rows[:, j] for j, name in enumerate(STEP_COLUMNS)})
    columns["skipped"] = columns["skipped"] > 0.5
    columns["optimizer"] = np.full(n, optimizer, dtype=np.int16)
    columns["rank"] = np.full(n, rank, dtype=np.int16)
    return columns


def layers_columns(steps: np.ndarray, present: np.ndarray, stats: np.ndarray, nonfinite: np.ndarray,
                   layer_ids: np.ndarray, optimizer: int, rank: int) -> dict[str, np.ndarray]:
    """The ``layers`` table of one flush.

    ``steps`` ([m] int64) are the steps with a layer sample; ``present``
    ([m, L] bool) says which of the L parameters had a gradient at each;
    ``stats`` ([m, L, len(LAYER_STATS)] float32) and ``nonfinite`` ([m, L]
    int64) hold the statistics; ``layer_ids`` ([L]) maps positions to layer ids.
    """
    slot, pos = np.nonzero(np.asarray(present, dtype=bool))
    columns = {
        "step": np.asarray(steps, dtype=np.int64)[slot],
        "optimizer": np.full(len(pos), optimizer, dtype=np.int16),
        "rank": np.full(len(pos), rank, dtype=np.int16),
        "layer": np.asarray(layer_ids, dtype=np.int32)[pos],
        "nonfinite": np.asarray(nonfinite, dtype=np.int64)[slot, pos],
    }
    for j, name in enumerate(LAYER_STATS):
        columns[name] = np.asarray(stats, dtype=np.float32)[slot, pos, j]
    return columns
