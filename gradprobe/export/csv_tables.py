"""CSV export: the run's steps and per-layer tables, written by pandas."""

from __future__ import annotations

import os
from pathlib import Path

from gradprobe.store import Run


def to_csv(run: Run, directory: str | os.PathLike) -> list[Path]:
    """Write ``directory/steps.csv`` and ``directory/layers.csv``; return their paths.

    ``steps.csv`` has one row per optimizer step, with the columns of
    ``run.steps``; ``layers.csv`` one row per layer per recorded step, with
    the columns of ``run.layers`` (``name`` is the layer's name).
    """
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    paths = [target / "steps.csv", target / "layers.csv"]
    run.steps.to_csv(paths[0], index=False)
    run.layers.to_csv(paths[1], index=False)
    return paths
