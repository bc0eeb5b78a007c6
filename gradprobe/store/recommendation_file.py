"""The recommendation file (``RUN/recommendation.json``): written by ``gradprobe recommend`` and
``gradprobe tune``, read by ``gradprobe run --clip-from`` and ``gradprobe apply --from``.

The file is plain JSON, ``{"run": ..., "recommendations": [{"spec": ...}, ...]}``,
best recommendation first. Nothing in it is executed or unpickled; a missing
or malformed file is a one-line error naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from gradprobe.errors import GradprobeError
from gradprobe.store.json_file import MiB, read_user_json
from gradprobe.store.writer import write_json_atomic

RECOMMENDATION_FILE = "recommendation.json"
# A handful of specs with their what-ifs take a few KiB; 4 MiB is a thousand times that.
MAX_RECOMMENDATION_BYTES = 4 * MiB


def write_recommendations(directory: Path, run_name: str, recommendations: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``directory/recommendation.json`` atomically, best recommendation first (plain JSON values)."""
    path = Path(directory) / RECOMMENDATION_FILE
    try:
        write_json_atomic(path, {"run": run_name, "recommendations": list(recommendations)})
    except OSError as exc:
        raise GradprobeError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def load_recommended_spec(path: str | os.PathLike) -> str:
    """The first recommendation's clip spec from ``path`` (a file, or a run directory holding one)."""
    file = Path(path)
    if file.is_dir():
        file = file / RECOMMENDATION_FILE
    document = read_user_json(file, MAX_RECOMMENDATION_BYTES, str(file),
                              "not found (write one with `gradprobe recommend RUN`)")
    recommendations = document.get("recommendations") if isinstance(document, dict) else None
    if not isinstance(recommendations, list) or not recommendations:
        raise GradprobeError(f"{file}: expected a non-empty 'recommendations' list")
    spec = recommendations[0].get("spec") if isinstance(recommendations[0], dict) else None
    if not isinstance(spec, str) or not spec.strip():
        raise GradprobeError(f"{file}: the first recommendation has no 'spec' string")
    return spec
