"""A run split into optimizer streams, with per-layer statistics as step x layer matrices.

Each optimizer counts its own steps, so every detector looks at one
optimizer's steps at a time. In a distributed run the ranks hold the same
(reduced) gradients; the lowest rank that recorded the optimizer stands for
all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from gradprobe.store.reader import Run, read_table

LAYER_COLUMNS = ("norm", "maxabs", "nonfinite", "param_norm", "update_norm")


@dataclass
class Stream:
    """One optimizer's recorded steps and the layers it updates (in depth order, input to output).

    ``steps`` has one row per step, sorted. ``sampled`` lists the steps with
    per-layer rows; :meth:`matrix` gives a column of the layer rows as a
    ``len(sampled) x len(layer_ids)`` array, NaN (or 0 for counts) where a
    layer had no gradient (``update_norm``: where no update was measured). ``all_ranks``: in a run recorded with
    ``--all-ranks``, the ``steps`` and layer rows of every rank, else None.
``run_meta``: the run's ``run.json`` (script, optimizers), for the commands
and notes of the findings.
    """

    optimizer: int
    steps: pd.DataFrame
    layer_ids: np.ndarray
    table: pd.DataFrame
    rows: pd.DataFrame = field(repr=False)
    _matrices: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    all_ranks: tuple[pd.DataFrame, pd.DataFrame] | None = field(default=None, repr=False)
    run_meta: dict = field(default_factory=dict, repr=False)

    @property
    def info(self) -> dict:
        """This optimizer's entry of ``run.json`` ``optimizers`` (empty when not recorded)."""
        for entry in self.run_meta.get("optimizers") or []:
            if isinstance(entry, dict) and entry.get("index") == self.optimizer:
                return entry
        return {}

    @property
    def names(self) -> list[str]:
        """Layer names, in depth order."""
        return [str(name) for name in self.table["name"]]

    @property
    def numel(self) -> np.ndarray:
        """Element count of each layer."""
        return self.table["numel"].to_numpy(dtype=np.float64)

    @property
    def is_vector(self) -> np.ndarray:
        """True for parameters with at most one dimension (biases, norm scales)."""
        return np.asarray([len(shape) <= 1 for shape in self.table["shape"]], dtype=bool)

    @cached_property
    def sampled(self) -> np.ndarray:
        """The steps that have per-layer rows, ascending."""
        return np.unique(self.rows["step"].to_numpy())

    @cached_property
    def _cells(self) -> tuple[np.ndarray, np.ndarray]:
        step_index = np.searchsorted(self.sampled, self.rows["step"].to_numpy())
        position = np.full(int(self.layer_ids.max(initial=-1)) + 2, -1, dtype=np.int64)
        position[self.layer_ids] = np.arange(len(self.layer_ids))
        ids = self.rows["layer"].to_numpy()
        ids = np.where((ids >= 0) & (ids < len(position) - 1), ids, len(position) - 1)
        return step_index, position[ids]

    @cached_property
    def present(self) -> np.ndarray:
        """Whether each layer had a gradient at each sampled step."""
        out = np.zeros((len(self.sampled), len(self.layer_ids)), dtype=bool)
        rows, cols = self._cells
        keep = cols >= 0
        out[rows[keep], cols[keep]] = True
        return out

    def matrix(self, column: str) -> np.ndarray:
        """``column`` of the layer rows as a sampled-step x layer array (float32 as recorded; counts int64)."""
        if column not in LAYER_COLUMNS:
            raise KeyError(column)
        cache = self._matrices
        if column not in cache:
            counts = column == "nonfinite"
            out = (np.zeros(self.present.shape, np.int64) if counts
                   else np.full(self.present.shape, np.nan, dtype=np.float32))
            rows, cols = self._cells
            keep = cols >= 0
            out[rows[keep], cols[keep]] = self.rows[column].to_numpy()[keep]
            cache[column] = out
        return cache[column]

    @cached_property
    def script_clip_scale(self) -> np.ndarray | None:
        """Per sampled step, the factor the script's own ``clip_grad_norm_`` applied before the
        per-layer statistics were read (1 where it did not fire); None when the script did not clip
        or gradprobe did (its own statistics are read before it clips)."""
        if self.run_meta.get("clip") or "clip_scale" not in self.steps:
            return None
        steps = self.steps.set_index("step")
        if not np.isfinite(steps["clip_threshold"].to_numpy(dtype=np.float64)).any():
            return None
        scale = steps["clip_scale"].reindex(self.sampled).to_numpy(dtype=np.float64)
        return np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)

    def pre_clip_matrix(self, column: str) -> np.ndarray:
        """:meth:`matrix`, with the script's own clipping undone for the gradient columns (``norm``,
        ``maxabs``): the statistics of the gradients before any clipping, as the global norm is."""
        grid = self.matrix(column)
        scale = self.script_clip_scale
        if scale is None or column not in ("norm", "maxabs"):
            return grid
        return (grid / scale[:, None]).astype(np.float32)

    @property
    def first_step(self) -> int:
        """The first recorded step (0 for an empty stream)."""
        return int(self.steps["step"].iloc[0]) if len(self.steps) else 0

    @property
    def last_step(self) -> int:
        """The last recorded step (0 for an empty stream)."""
        return int(self.steps["step"].iloc[-1]) if len(self.steps) else 0


def _one_rank(frame: pd.DataFrame, rank: int | None) -> pd.DataFrame:
    """The rows of ``rank`` (None: of the lowest rank present)."""
    ranks = frame["rank"].unique()
    if rank is None:
        if len(ranks) <= 1:
            return frame
        rank = ranks.min()
    return frame[frame["rank"] == rank]


def with_updates(rows: pd.DataFrame, run: Run) -> pd.DataFrame:
    """The layer rows with the applied update's norm of each (``update_norm``, NaN where not recorded)."""
    updates = read_table(run.path, "updates")
    keys = ["step", "optimizer", "rank", "layer"]
    if updates.empty:
        return rows.assign(update_norm=np.float32("nan"))
    return rows.merge(updates[keys + ["update_norm"]].drop_duplicates(keys, keep="last"), on=keys, how="left")


def split_streams(run: Run, rank: int | None = None) -> list[Stream]:
    """One :class:`Stream` per optimizer that recorded steps or owns layers, in optimizer order.

    ``rank``: whose steps to read (default: the lowest rank that recorded each optimizer).
    """
    steps, rows, table = run.steps, with_updates(run.layers, run), run.layer_table
    owners = pd.to_numeric(table["optimizer"], errors="coerce")
    optimizers = sorted(set(steps["optimizer"].unique()) | set(rows["optimizer"].unique())
                        | set(owners.dropna().astype(int)))
    single = len(optimizers) == 1
    world = run.meta.get("world")
    every_rank = isinstance(world, dict) and bool(world.get("all_ranks"))
    streams = []
    for optimizer in optimizers:
        own_steps = steps if single else steps[steps["optimizer"] == optimizer]
        own_rows = rows if single else rows[rows["optimizer"] == optimizer]
        all_ranks = (own_steps, own_rows) if every_rank and own_steps["rank"].nunique() > 1 else None
        own_steps = _one_rank(own_steps, rank).drop_duplicates("step", keep="last").reset_index(drop=True)
        own_rows = _one_rank(own_rows, rank)
        if single:
            ids = table["id"].to_numpy()
        else:
            seen = set(own_rows["layer"].unique())
            ids = table["id"][(owners == optimizer) | (owners.isna() & table["id"].isin(seen))].to_numpy()
        ids = np.asarray(sorted(int(i) for i in ids), dtype=np.int64)
        streams.append(Stream(int(optimizer), own_steps, ids, table.loc[ids], own_rows, all_ranks=all_ranks,
                              run_meta=run.meta))
    return streams
