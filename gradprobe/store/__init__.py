"""The run store: one directory per run, ``run.json`` plus append-only Parquet parts, read back as
pandas tables (:class:`Run`) or one optimizer at a time (:class:`Stream`)."""

from gradprobe.store.reader import Run, list_runs, load_run, resolve_run
from gradprobe.store.streams import Stream, split_streams
from gradprobe.store.writer import DEFAULT_ROOT, RunWriter, create_run_dir

__all__ = ["DEFAULT_ROOT", "Run", "RunWriter", "Stream", "create_run_dir", "list_runs", "load_run", "resolve_run",
           "split_streams"]
