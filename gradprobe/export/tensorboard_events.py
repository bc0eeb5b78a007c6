"""TensorBoard export: event files written with TensorBoard's own writer.

The writer is ``tensorboard.summary.Writer`` from the ``tensorboard`` package
(the event-file writer ``torch.utils.tensorboard`` also builds on). It needs
neither PyTorch nor TensorFlow, so PyTorch and Keras runs export the same
way; TensorBoard's scalar dashboard shows the values, and
``EventAccumulator(path, size_guidance={"tensors": 0}).Tensors(tag)`` reads
them back.
"""

from __future__ import annotations

import os
from pathlib import Path

from gradprobe.errors import GradprobeError
from gradprobe.export.scalars import scalar_series
from gradprobe.store import Run


def to_tensorboard(run: Run, logdir: str | os.PathLike) -> Path:
    """Write ``run``'s scalars as event files in ``logdir/<run name>``; return that directory.

    Point ``tensorboard --logdir LOGDIR`` at ``logdir`` to see every run
    exported there side by side. Refuses a directory that already holds
    event files (exporting twice would duplicate every point).
    """
    try:
        from tensorboard.summary import Writer
    except ImportError:
        raise GradprobeError("--tensorboard needs the `tensorboard` package: pip install tensorboard") from None
    target = Path(logdir) / run.name
    if target.is_dir() and any(target.glob("events.out.tfevents.*")):
        raise GradprobeError(f"{target} already holds TensorBoard event files; remove them or export elsewhere")
    series = scalar_series(run)
    writer = Writer(str(target))
    try:
        for row in series.itertuples(index=False):
            writer.add_scalar(row.tag, row.value, int(row.step), wall_time=float(row.time),
                              description=row.description)
    finally:
        writer.close()
    return target
