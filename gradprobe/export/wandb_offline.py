"""Weights & Biases export: an offline W&B run, written by the ``wandb`` package itself.

Nothing leaves the machine: the run is written in offline mode under the
directory given, and ``wandb sync <run folder>`` uploads it when wanted. The
W&B step is gradprobe's optimizer step; with several optimizers their values
of the same step index share one W&B step, told apart by their tag prefix.
"""

from __future__ import annotations

import os
from pathlib import Path

from gradprobe.errors import GradprobeError
from gradprobe.export.scalars import scalar_series
from gradprobe.store import Run

CONFIG_KEYS = ("framework", "script", "argv", "status", "clip", "sampling", "world", "gradprobe_version")


def to_wandb(run: Run, directory: str | os.PathLike, project: str = "gradprobe") -> Path:
    """Log ``run``'s scalars to an offline W&B run under ``directory``; return the run's folder.

    The W&B run is named after the gradprobe run and its config holds the
    run's framework, script, status, clip policy and sampling settings.
    """
    try:
        import wandb
    except ImportError:
        raise GradprobeError("--wandb needs the `wandb` package: pip install wandb") from None
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    series = scalar_series(run)
    config = {key: run.meta.get(key) for key in CONFIG_KEYS}
    wb_run = wandb.init(mode="offline", dir=str(target), project=project, name=run.name, config=config,
                        reinit="create_new", settings=wandb.Settings(silent=True))
    try:
        for step, rows in series.groupby("step", sort=True):
            wb_run.log(dict(zip(rows["tag"], rows["value"])), step=int(step))
    finally:
        wb_run.finish()
    return Path(wb_run.dir).parent
