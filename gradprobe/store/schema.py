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
"""

import pyarrow as pa

FORMAT_VERSION = 1

STEPS_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("optimizer", pa.int16()),
        ("rank", pa.int16()),
        ("time", pa.float64()),
        ("global_norm", pa.float32()),
        ("global_norm_post", pa.float32()),
        ("clip_scale", pa.float32()),
        ("clip_threshold", pa.float32()),
        ("loss", pa.float32()),
        ("skipped", pa.bool_()),
    ]
)

LAYERS_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("optimizer", pa.int16()),
        ("rank", pa.int16()),
        ("layer", pa.int32()),
        ("norm", pa.float32()),
        ("maxabs", pa.float32()),
        ("nonfinite", pa.int64()),
        ("param_norm", pa.float32()),
    ]
)

TASKS_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("optimizer", pa.int16()),
        ("rank", pa.int16()),
        ("time", pa.float64()),
        ("task", pa.string()),
        ("other", pa.string()),
        ("norm", pa.float32()),
        ("cosine", pa.float32()),
    ]
)

TABLES = {"steps": STEPS_SCHEMA, "layers": LAYERS_SCHEMA, "tasks": TASKS_SCHEMA}

STATUSES = ("running", "finished", "crashed", "interrupted")
