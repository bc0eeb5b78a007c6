"""Column layout of a run's Parquet parts and the version of the run format.

``steps`` parts hold one row per recorded optimizer step (per rank):

=================  =======  ==========================================================
column             type     meaning
=================  =======  ==========================================================
step               int64    the optimizer's own step index, from 0
optimizer          int16    index of the optimizer (``run.json`` ``optimizers``)
rank               int16    process rank (0 when not distributed)
time               float64  wall-clock time of the step, Unix seconds
global_norm        float32  L2 norm of all gradients before clipping
global_norm_post   float32  L2 norm the optimizer received (after any clipping)
clip_scale         float32  factor applied to the gradients (1.0: not clipped)
clip_threshold     float32  threshold in force (NaN: no clipping observed)
loss               float32  the scalar ``backward()`` was called on (NaN: unknown)
skipped            bool     the update was skipped (AMP overflow or a skip policy)
=================  =======  ==========================================================

``layers`` parts hold one row per parameter per recorded step (every ``every``
steps): ``step``, ``optimizer``, ``rank``, ``layer`` (id into ``run.json``
``layers``), ``norm`` (L2), ``maxabs`` (L-inf), ``nonfinite`` (count of NaN/Inf
elements) and ``param_norm`` (L2 of the parameter itself). Norms are float32,
computed in float32 or wider whatever the gradient dtype.

``tasks`` parts (only when the script calls ``gradprobe.task_gradients``) hold,
per sampled step, one row per task (``task``, ``other`` empty, ``norm``: L2 of
that task's gradient on the shared parameters, ``cosine`` NaN) and one row per
pair of tasks (``task``, ``other``, ``cosine``: cosine similarity of their
gradients, ``norm`` NaN), with ``step``, ``optimizer``, ``rank`` and ``time``.

``batches`` parts hold one row per batch that went into an optimizer step (several
rows for a step with gradient accumulation or several loaders): ``step``,
``optimizer``, ``rank``, ``loader`` (the DataLoader's variable name, or empty for
a batch seen only as the model's input), ``epoch`` (how many times that loader had
been iterated before, from 0), ``kind`` (``indices``: dataset indices the sampler
yielded; ``positions``: sample positions in the epoch of an ``IterableDataset``;
``fingerprint``: no DataLoader), ``first`` and ``count`` (the smallest index or
position and the number of samples) and ``samples`` (the indices or positions as
ranges, ``4480-4543`` or ``3,17,40-47``; for a fingerprint, its text).

``updates`` parts (PyTorch optimizer steps) hold one row per parameter per sampled
step (the steps of the ``layers`` rows): ``step``, ``optimizer``, ``rank``, ``layer``
and ``update_norm``, the L2 norm of the change the optimizer step made to the
parameter (after minus before). Divided by that step's ``param_norm`` it is the
update-to-weight ratio (``Run.updates`` adds it as ``ratio``).

``noise`` parts (PyTorch steps with gradient accumulation) hold one row per
sampled optimizer step that accumulated several backward passes: ``step``, ``optimizer``,
``rank``, ``micro_batches`` (the backward passes, K), ``micro_sq`` (the mean over
them of the squared L2 norm of what each pass added to the gradients) and
``total_sq`` (the squared L2 norm of the accumulated gradient, the sum of those
contributions, before any clipping). Under DDP (a run whose ``world`` has W > 1 ranks) a row
compares this rank's gradient with the all-reduced one instead: K = W, ``micro_sq``
this rank's squared norm, ``total_sq`` W² x the all-reduced gradient's. :mod:`gradprobe.analysis.noise_scale` turns them
into the gradient noise scale.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

FORMAT_VERSION = 1

# Each table's columns and their Arrow types (``pyarrow`` type factories by name).
COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "steps": (
        ("step", "int64"),
        ("optimizer", "int16"),
        ("rank", "int16"),
        ("time", "float64"),
        ("global_norm", "float32"),
        ("global_norm_post", "float32"),
        ("clip_scale", "float32"),
        ("clip_threshold", "float32"),
        ("loss", "float32"),
        ("skipped", "bool_"),
    ),
    "layers": (
        ("step", "int64"),
        ("optimizer", "int16"),
        ("rank", "int16"),
        ("layer", "int32"),
        ("norm", "float32"),
        ("maxabs", "float32"),
        ("nonfinite", "int64"),
        ("param_norm", "float32"),
    ),
    "tasks": (
        ("step", "int64"),
        ("optimizer", "int16"),
        ("rank", "int16"),
        ("time", "float64"),
        ("task", "string"),
        ("other", "string"),
        ("norm", "float32"),
        ("cosine", "float32"),
    ),
    "batches": (
        ("step", "int64"),
        ("optimizer", "int16"),
        ("rank", "int16"),
        ("loader", "string"),
        ("epoch", "int32"),
        ("kind", "string"),
        ("first", "int64"),
        ("count", "int64"),
        ("samples", "string"),
    ),
    "updates": (
        ("step", "int64"),
        ("optimizer", "int16"),
        ("rank", "int16"),
        ("layer", "int32"),
        ("update_norm", "float32"),
    ),
    "noise": (
        ("step", "int64"),
        ("optimizer", "int16"),
        ("rank", "int16"),
        ("micro_batches", "int32"),
        ("micro_sq", "float32"),
        ("total_sq", "float32"),
    ),
}

STATUSES = ("running", "finished", "crashed", "interrupted")


@functools.cache
def arrow_schemas() -> dict[str, pa.Schema]:
    """The Arrow schema of each table (pyarrow is imported here, when a part is first written or read)."""
    import pyarrow as pa

    return {table: pa.schema([(name, getattr(pa, kind)()) for name, kind in columns])
            for table, columns in COLUMNS.items()}


def __getattr__(name: str) -> Any:
    # ``TABLES``, the schema of each table by name, is built on first use.
    if name == "TABLES":
        return arrow_schemas()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
