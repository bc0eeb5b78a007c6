"""Writing a run directory: ``run.json`` (atomically replaced) and append-only Parquet parts."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from gradprobe.errors import GradprobeError
from gradprobe.store.json_file import cut_text
from gradprobe.store.schema import COLUMNS, FORMAT_VERSION, arrow_schemas

if TYPE_CHECKING:
    import numpy as np

DEFAULT_ROOT = "gradprobe-runs"
META_FILE = "run.json"
PARTS_DIR = "parts"
RESERVE_FILE = ".reserve"
RESERVE_BYTES = 1 << 20  # room for the last run.json writes of a model with thousands of layers
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")


_TEMP_NAMES = itertools.count(1)


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path`` that no other process, thread or earlier write uses."""
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}-{next(_TEMP_NAMES)}.tmp")


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename; a failed write
    leaves ``path`` as it was and no temporary file behind."""
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default)
    tmp = temporary_name(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _release(tmp)
        raise


def _json_default(value: Any) -> Any:
    np = sys.modules.get("numpy")  # a numpy scalar can only come from a numpy already imported
    if np is not None and isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in run.json")


def check_run_name(name: str) -> str:
    """Return ``name`` if it is a safe run-directory name, else raise a one-line error."""
    if not _NAME_OK.match(name) or ".." in name:
        raise GradprobeError(
            f"invalid run name {name!r}: use letters, digits and '._+-', "
            "starting with a letter or digit, no '..' and no path separators"
        )
    return name


def create_run_dir(root: str | os.PathLike, stem: str, name: str | None = None) -> Path:
    """Create a new, unique run directory under ``root``; return its absolute path.

    Without ``name`` the directory is ``YYYYmmdd-HHMMSS-<stem>``, with ``-2``,
    ``-3``... appended when that exists (``mkdir`` is atomic, so concurrent runs
    never share a directory). An explicit ``name`` that exists is an error.
    """
    root_path = Path(os.path.abspath(root))
    try:
        root_path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GradprobeError(f"cannot create run root {root}: {exc.strerror or exc}") from None
    if not os.access(root_path, os.W_OK | os.X_OK):
        raise GradprobeError(f"run root {root} is not writable (choose another with --out)")
    if name is not None:
        path = root_path / check_run_name(name)
        try:
            path.mkdir()
        except FileExistsError:
            raise GradprobeError(f"run {path} already exists (choose another --name)") from None
        return path
    safe_stem = re.sub(r"[^A-Za-z0-9._+-]", "_", stem)[:80] or "run"
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{safe_stem}"
    for attempt in range(1, 10_000):
        path = root_path / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise GradprobeError(f"cannot find a free run directory name under {root}")


class RunWriter:
    """Owns one run directory: keeps ``run.json`` current and appends Parquet parts.

    A write failure (disk full, directory removed) never reaches the training
    loop: it is reported once on stderr, the run is marked ``incomplete`` and
    later parts are dropped. A small file of reserved space (``.reserve``) is
    given back at the first failure, so that on a full disk ``run.json`` can
    still record that and, at :meth:`close`, how the run ended. Writes from
    several threads (two models trained at once) are serialised. Only the
    process that created the writer writes: in a forked child (a DataLoader
    worker, a Hogwild trainer) every write is dropped, with one notice should
    the child record.
    """

    def __init__(self, path: Path, meta: Mapping[str, Any], rank: int = 0):
        self.path = Path(os.path.abspath(path))
        self.rank = rank
        self._pid = os.getpid()
        self.meta: dict[str, Any] = {"format_version": FORMAT_VERSION, **meta, "pid": self._pid}
        self._seq = dict.fromkeys(COLUMNS, 0)
        self._lock = threading.RLock()
        self.failed = False
        self._child_noticed = False
        (self.path / PARTS_DIR).mkdir(exist_ok=True)
        self._reserve = self.path / RESERVE_FILE
        _reserve_space(self._reserve, RESERVE_BYTES)
        self.write_meta()

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` into the run metadata (long texts, such as an error message, cut to
        what readers keep) and rewrite ``run.json``."""
        with self._lock:
            self.meta.update({key: cut_text(v) if isinstance(v, str) else v for key, v in fields.items()})
            self.write_meta()

    def close(self, **fields: Any) -> None:
        """Write the run's final metadata, then give back the reserved space."""
        with self._lock:
            self.update(**fields)
            if self._in_owner():
                _release(self._reserve)

    def mark_incomplete(self, reason: str) -> None:
        """Note in ``run.json`` that recording stopped early, and why (the first reason is kept)."""
        with self._lock:
            self.meta["incomplete"] = True
            self.meta.setdefault("incomplete_reason", reason)
            self.write_meta()

    def write_meta(self) -> None:
        """Atomically rewrite ``run.json`` from the in-memory metadata."""
        if self.rank != 0 or not self._in_owner():
            return
        with self._lock:
            try:
                write_json_atomic(self.path / META_FILE, self.meta)
            except OSError as exc:
                self._fail(exc)

    def append(self, table: str, columns: Mapping[str, np.ndarray]) -> bool:
        """Append one Parquet part of ``table`` (``steps`` or ``layers``); False when it was dropped.
        The first part imports numpy and pyarrow, so that a script starts without them."""
        if self.failed or not self._in_owner():
            return False
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = arrow_schemas()[table]
        arrays = [pa.array(np.asarray(columns[f.name]), type=f.type) for f in schema]
        if len(arrays[0]) == 0:
            return True
        part = pa.Table.from_arrays(arrays, schema=schema)
        with self._lock:
            if self.failed:
                return False
            self._seq[table] += 1
            final = self.path / PARTS_DIR / f"{table}-r{self.rank}-{self._seq[table]:06d}.parquet"
            tmp = temporary_name(final)
            try:
                pq.write_table(part, tmp)
                os.replace(tmp, final)
            except OSError as exc:
                _release(tmp)  # give back the space a partial part holds
                self._fail(exc)
                return False
        return True

    def _in_owner(self) -> bool:
        if os.getpid() == self._pid:
            return True
        if not self._child_noticed:
            self._child_noticed = True
            print(f"gradprobe: process {os.getpid()} is a child of the profiled process; "
                  "its gradients are not recorded", file=sys.stderr)
        return False

    def _fail(self, exc: OSError) -> None:
        if self.failed:
            return
        self.failed = True
        _release(self._reserve)
        reason = f"cannot write to {self.path} ({exc.strerror or exc})"
        print(f"gradprobe: {reason}; recording stopped, training continues", file=sys.stderr)
        self.mark_incomplete(reason)


def _reserve_space(path: Path, size: int) -> None:
    """Hold ``size`` bytes of disk in ``path`` (best effort: a disk already too full gets none)."""
    try:
        with open(path, "wb") as f:
            f.write(bytes(size))
    except OSError:
        _release(path)


def _release(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
