"""The run store: one directory per run, ``run.json`` plus append-only Parquet parts, read back as
pandas tables (:class:`Run`) or one optimizer at a time (:class:`Stream`).

Each name is imported on first use: a recording's writer loads pyarrow only when it writes its
first part, and pandas comes only with the reader.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gradprobe._lazy import lazy_names

if TYPE_CHECKING:
    from gradprobe.store.reader import Run, list_runs, load_run, resolve_run, resolve_runs
    from gradprobe.store.streams import Stream, split_streams
    from gradprobe.store.writer import DEFAULT_ROOT, RunWriter, create_run_dir

_HOMES = {
    **dict.fromkeys(("Run", "list_runs", "load_run", "resolve_run", "resolve_runs"), "gradprobe.store.reader"),
    **dict.fromkeys(("Stream", "split_streams"), "gradprobe.store.streams"),
    **dict.fromkeys(("DEFAULT_ROOT", "RunWriter", "create_run_dir"), "gradprobe.store.writer"),
}
__all__ = ["DEFAULT_ROOT", "Run", "RunWriter", "Stream", "create_run_dir", "list_runs", "load_run", "resolve_run",
           "resolve_runs", "split_streams"]
__getattr__, __dir__ = lazy_names(__name__, _HOMES)
