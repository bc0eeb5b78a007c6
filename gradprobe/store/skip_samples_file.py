"""The file ``gradprobe run --skip-samples`` reads: which samples of which DataLoader to drop.

It is JSON, an object with ``loaders`` mapping a loader's variable name (as the
``batches`` table and the report name it) to its dataset indices as
:mod:`~gradprobe.store.sample_ranges` text or a list of integers::

    {"loaders": {"train_loader": "4480-4543,9001"}}

``gradprobe report`` writes one (``skip-samples.json`` in the run directory)
when a spike or non-finite finding names the batch of the worst step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from gradprobe.errors import GradprobeError
from gradprobe.store.json_file import MiB, read_user_json
from gradprobe.store.sample_ranges import format_ranges, parse_ranges
from gradprobe.store.writer import write_json_atomic

SKIP_FILE = "skip-samples.json"


def read_skip_samples(path: str | Path) -> dict[str, frozenset[int]]:
    """The samples to drop, per loader name; a missing or malformed file is a one-line error."""
    data = read_user_json(Path(path), 16 * MiB, f"--skip-samples {path}", "no such file")
    loaders = data.get("loaders") if isinstance(data, dict) else None
    if not isinstance(loaders, dict) or not loaders:
        raise GradprobeError(f"--skip-samples {path}: expected an object with a non-empty 'loaders' object, "
                             'e.g. {"loaders": {"train_loader": "4480-4543"}}')
    skips = {}
    for name, samples in loaders.items():
        if isinstance(samples, str):
            try:
                skips[name] = frozenset(parse_ranges(samples))
            except GradprobeError as exc:
                raise GradprobeError(f"--skip-samples {path}: loader {name!r}: {exc}") from None
        elif isinstance(samples, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                               for i in samples):
            skips[name] = frozenset(samples)
        else:
            raise GradprobeError(f"--skip-samples {path}: loader {name!r}: expected range text such as "
                                 "'4480-4543' or a list of non-negative integers")
    return skips


def write_skip_samples(path: Path, samples: Mapping[str, list[int]]) -> None:
    """Write a skip file dropping ``samples`` (per loader name), atomically."""
    write_json_atomic(path, {"loaders": {name: format_ranges(indices) for name, indices in samples.items()}})
