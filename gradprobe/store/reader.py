"""Reading run directories into pandas: ``load_run`` and ``list_runs``."""

from __future__ import annotations

import os
import socket
import sys
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gradprobe.errors import RunFormatError, visible
from gradprobe.store.json_file import JSONFileError, MiB, read_json_file
from gradprobe.store.schema import FORMAT_VERSION, STATUSES, TABLES
from gradprobe.store.shards import combine_layers, combine_steps
from gradprobe.store.views import view
from gradprobe.store.writer import DEFAULT_ROOT, META_FILE, PARTS_DIR

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LAYER_FIELDS = ("id", "name", "shape", "numel", "dtype", "group")

# Optional run.json fields that readers use, with their JSON types (``None`` is always allowed).
FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "framework": ((dict,), "an object"),
    "script": ((str,), "a string"),
    "argv": ((list,), "a list of strings"),
    "host": ((str,), "a string"),
    "pid": ((int,), "an integer"),
    "start_time": ((int, float), "a number"),
    "end_time": ((int, float), "a number"),
    "exit_code": ((int,), "an integer"),
    "error": ((str,), "a string"),
    "stop_reason": ((str,), "a string"),
    "clip": ((str,), "a string"),
    "sampling": ((dict,), "an object"),
    "world": ((dict,), "an object"),
    "optimizers": ((list,), "a list of objects"),
    "layers": ((list,), "a list of objects"),
    "progress": ((dict,), "an object"),
    "warnings": ((list,), "a list of strings"),
    "incomplete": ((bool,), "true or false"),
    "incomplete_reason": ((str,), "a string"),
}
# The layer table takes about 250 bytes a parameter: 64 MiB holds a quarter of a million parameter tensors.
MAX_META_BYTES = 64 * MiB
MAX_TIME = 1e11  # Unix seconds, year 5138: later (or NaN) is not a time
LAYER_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "id": ((int,), "an integer"),
    "name": ((str,), "a string"),
    "shape": ((list,), "a list of integers"),
    "numel": ((int,), "an integer"),
    "dtype": ((str,), "a string"),
    "group": ((str,), "a string or null"),
}


def read_meta(path: Path) -> dict[str, Any]:
    """Read and validate ``run.json`` of the run directory ``path``."""
    file = Path(path) / META_FILE
    try:
        meta = read_json_file(file, MAX_META_BYTES)
    except FileNotFoundError:
        raise RunFormatError(f"{file}: not found (is {path} a gradprobe run directory?)") from None
    except JSONFileError as exc:
        raise RunFormatError(f"{file}: {exc}") from None
    if not isinstance(meta, dict):
        raise RunFormatError(f"{file}: expected a JSON object, found {type(meta).__name__}")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise RunFormatError(f"{file}: 'format_version' is missing or not an integer")
    if version > FORMAT_VERSION:
        raise RunFormatError(
            f"{file}: format version {version} is newer than this gradprobe reads "
            f"({FORMAT_VERSION}); upgrade gradprobe"
        )
    if meta.get("status") not in STATUSES:
        raise RunFormatError(f"{file}: 'status' must be one of {', '.join(STATUSES)}")
    for key, (kinds, what) in FIELD_TYPES.items():
        value = meta.get(key)
        if value is not None and not _is(value, kinds):
            raise RunFormatError(f"{file}: '{key}' must be {what}, found {_json_type(value)}")
    if not all(isinstance(arg, str) for arg in meta.get("argv") or []):
        raise RunFormatError(f"{file}: 'argv' must be a list of strings")
    if not all(isinstance(o, dict) and _is(o.get("index", 0), (int,)) for o in meta.get("optimizers") or []):
        raise RunFormatError(f"{file}: 'optimizers' must be a list of objects with an integer 'index'")
    for key in ("start_time", "end_time"):
        if meta.get(key) is not None and not 0 <= meta[key] < MAX_TIME:
            raise RunFormatError(f"{file}: '{key}' must be a Unix time in seconds, found {meta[key]}")
    if meta.get("pid") is not None and not 0 < meta["pid"] < 2**31:
        raise RunFormatError(f"{file}: 'pid' must be a process id, found {meta['pid']}")
    _check_layers(file, meta.get("layers") or [], meta.get("optimizers"))
    return meta


def _is(value: Any, kinds: tuple[type, ...]) -> bool:
    return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number"}
    return names.get(type(value), type(value).__name__)


def _check_layers(file: Path, layers: list, optimizers: list | None) -> None:
    """Each entry of ``layers`` has the fields renderers use, with usable types, a unique id and a
    unique name, and names an optimizer that ``optimizers`` lists (when it lists any)."""
    problem = f"{file}: 'layers' must be a list of objects with {', '.join(LAYER_FIELDS)}"
    known = {o.get("index", 0) for o in optimizers or []} or None  # None: no optimizer table to check against
    ids, names = set(), set()
    for layer in layers:
        if not isinstance(layer, dict) or not all(k in layer for k in LAYER_FIELDS):
            raise RunFormatError(problem)
        for key, (kinds, what) in LAYER_TYPES.items():
            if not _is(layer[key], kinds) and not (key == "group" and layer[key] is None):
                raise RunFormatError(f"{file}: layer {layer['name']!r}: '{key}' must be {what}")
        if not all(_is(n, (int,)) for n in layer["shape"]) or layer["id"] in ids or layer["id"] < 0:
            raise RunFormatError(f"{file}: layer {layer['name']!r}: bad shape or repeated id {layer['id']}")
        if layer["name"] in names:
            raise RunFormatError(f"{file}: layer name {layer['name']!r} appears more than once")
        owner = layer.get("optimizer")
        if owner is not None and not _is(owner, (int,)):
            raise RunFormatError(f"{file}: layer {layer['name']!r}: 'optimizer' must be an integer")
        if owner is not None and known is not None and owner not in known:
            raise RunFormatError(f"{file}: layer {layer['name']!r}: optimizer {owner} is not one of "
                                 f"'optimizers' ({', '.join(map(str, sorted(known)))})")
        ids.add(layer["id"])
        names.add(layer["name"])


def read_table(path: Path, table: str) -> pd.DataFrame:
    """Concatenate every Parquet part of ``table`` in the run directory ``path``.

    A part that cannot be read (for instance truncated by a killed process) is
    skipped with a warning on stderr; a part with missing columns is an error.
    """
    schema = TABLES[table]
    if not (Path(path) / PARTS_DIR).is_dir():  # the writer creates it before run.json
        raise RunFormatError(f"{Path(path) / PARTS_DIR}: missing, so the recorded steps are gone "
                             "(a run directory copied without it?)")
    parts = sorted(p for p in (Path(path) / PARTS_DIR).glob(f"{table}-r*-*.parquet") if p.is_file())
    tables = []
    for part in parts:
        try:
            data = pq.read_table(part)
        except (OSError, pa.ArrowException) as exc:
            print(f"gradprobe: skipping unreadable part {visible(part)}: {visible(exc)}", file=sys.stderr)
            continue
        missing = [name for name in schema.names if name not in data.column_names]
        if missing:
            raise RunFormatError(f"{part}: missing column(s) {', '.join(missing)}")
        try:
            data = data.select(schema.names).cast(schema)
        except pa.ArrowException as exc:
            raise RunFormatError(f"{part}: columns have the wrong types ({_first_line(exc)})") from None
        holes = [f.name for f in schema if not pa.types.is_floating(f.type) and data.column(f.name).null_count]
        if holes:
            raise RunFormatError(f"{part}: missing values in column(s) {', '.join(holes)}")
        tables.append(data)
    combined = pa.concat_tables(tables) if tables else schema.empty_table()
    frame = combined.to_pandas()
    return frame.sort_values(["optimizer", "step"], kind="stable").reset_index(drop=True)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class Run:
    """A recorded run: ``meta`` (run.json), ``steps``, ``layers``, ``batches``, ``updates``, ``noise``
    and ``layer_table``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise RunFormatError(f"{self.path}: not a run directory")
        self.meta = read_meta(self.path)

    @cached_property
    def steps(self) -> pd.DataFrame:
        """One row per optimizer step (see :mod:`gradprobe.store.schema`)."""
        return combine_steps(read_table(self.path, "steps"), self.meta)

    @cached_property
    def layers(self) -> pd.DataFrame:
        """One row per parameter per recorded step, with the layer ``name`` joined in."""
        frame = combine_layers(read_table(self.path, "layers"), self.meta)
        names = self.layer_table["name"]
        codes = names.index.get_indexer(frame["layer"])
        if (codes < 0).any():
            unknown = sorted(set(frame["layer"][codes < 0].tolist()))[:5]
            raise RunFormatError(f"{self.path / PARTS_DIR}: layer rows refer to id(s) "
                                 f"{', '.join(map(str, unknown))} missing from {META_FILE} 'layers'")
        frame["name"] = pd.Categorical.from_codes(codes, categories=pd.Index(names))
        return frame

    @cached_property
    def batches(self) -> pd.DataFrame:
        """One row per batch that went into an optimizer step: which loader, which samples
        (see :mod:`gradprobe.store.schema`); empty when the run recorded none."""
        return read_table(self.path, "batches")

    @cached_property
    def updates(self) -> pd.DataFrame:
        """One row per parameter per sampled step: the norm of the update the optimizer applied
        (``update_norm``), the parameter's norm before it (``param_norm``, from ``layers``), their
        ``ratio`` and the layer ``name``; empty when the run recorded none."""
        frame = read_table(self.path, "updates")
        keys = ["step", "optimizer", "rank", "layer"]
        frame = frame.merge(self.layers[keys + ["param_norm", "name"]], on=keys, how="left")
        with np.errstate(divide="ignore", invalid="ignore"):
            frame["ratio"] = (frame["update_norm"] / frame["param_norm"]).astype("float32")
        return frame

    @cached_property
    def noise(self) -> pd.DataFrame:
        """One row per optimizer step that accumulated several backward passes: how many, the mean
        squared norm of their gradients and that of the accumulated one (see
        :mod:`gradprobe.store.schema`); empty when the run recorded none."""
        return read_table(self.path, "noise")

    @cached_property
    def layer_table(self) -> pd.DataFrame:
        """The recorded parameters, indexed by layer id, in model (depth) order."""
        table = pd.DataFrame(self.meta.get("layers", []), columns=list(LAYER_FIELDS) + ["optimizer"])
        return table.set_index("id", drop=False).sort_index()

    @property
    def name(self) -> str:
        """The run directory's name."""
        return self.path.name

    @property
    def ended_abruptly(self) -> bool:
        """The run is marked ``running`` but the process that wrote it, on this host, is gone
        (killed with SIGKILL, out of memory, power loss): it will never be closed."""
        pid = self.meta.get("pid")
        if self.meta.get("status") != "running" or not pid or self.meta.get("host") != socket.gethostname():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # it exists but belongs to someone else
            return False
        return False

    @property
    def notes(self) -> list[str]:
        """Sentences every report shows about the run's state: still being written, ended
        abruptly, nothing recorded, or incomplete because recording stopped early."""
        notes = []
        if self.ended_abruptly and self.meta.get("incomplete"):
            notes.append("ended without recording how: its writes were failing (see incomplete)")
        elif self.ended_abruptly:
            notes.append("ended abruptly: the process stopped without closing the run (killed or out of "
                         "memory); steps after the last flush were lost")
        elif self.meta.get("status") == "running":
            notes.append("still being written (or ended on another host): this report covers the steps "
                         "flushed so far")
        if self.meta.get("status") != "running" and (self.meta.get("progress") or {}).get("steps") == 0:
            notes.append("nothing was recorded: the script never updated trainable parameters "
                         "(no optimizer step or backward pass, or every parameter frozen)")
        if self.meta.get("incomplete"):
            reason = self.meta.get("incomplete_reason") or "recording stopped early"
            notes.append(f"incomplete: {reason}; steps after that were not recorded")
        return notes

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.meta.get('status')!r})"

    def _repr_html_(self) -> str:
        """Jupyter's view of the run: status, norms with a sparkline, loss, clipping and top findings."""
        return view("html")(self)

    def plot(self, groups: Sequence[str] = ()) -> list["Figure"]:
        """The report's matplotlib figures: global norm and loss over time (findings marked), and with
        per-layer statistics the layer heatmap, norm distributions and gradient flow, per optimizer.
        ``groups``: ``NAME=GLOB`` layer groups for the imbalance check."""
        return view("figures")(self, groups)


def load_run(path: str | os.PathLike) -> Run:
    """Open the run directory ``path``; tables are read on first access."""
    return Run(path)


def list_runs(root: str | os.PathLike = DEFAULT_ROOT) -> list[Run]:
    """Every readable run under ``root``, oldest first; unreadable ones are skipped."""
    root_path = Path(root)
    if not root_path.is_dir():
        return []
    runs = []
    for child in root_path.iterdir():
        if (child / META_FILE).is_file():
            try:
                runs.append(Run(child))
            except RunFormatError as exc:
                print(f"gradprobe: skipping {visible(exc)}", file=sys.stderr)
    return sorted(runs, key=lambda run: (run.meta.get("start_time") or 0, run.name))


def resolve_run(ref: str | None, root: str | os.PathLike = DEFAULT_ROOT) -> Run:
    """Find a run from a path, a run name under ``root``, or ``None`` for the latest one."""
    if ref is None:
        runs = list_runs(root)
        if not runs:
            raise RunFormatError(f"no runs under {root}; record one with `gradprobe profile SCRIPT`")
        return runs[-1]
    candidate = _located(ref, root)
    if not candidate.exists():
        raise RunFormatError(f"{ref}: no such run directory")
    return Run(candidate)


def _located(ref: str, root: str | os.PathLike) -> Path:
    """``ref`` as a path when it exists, else as a name under ``root`` when that exists, else as given."""
    candidate = Path(ref)
    if not candidate.exists() and (Path(root) / ref).exists():
        candidate = Path(root) / ref
    return candidate


def resolve_runs(refs: Sequence[str], root: str | os.PathLike = DEFAULT_ROOT) -> list[Run]:
    """:func:`resolve_run` for each of ``refs`` (none: the latest run); a directory of runs that is
    no run itself, such as a ``gradprobe tune`` directory, stands for every run in it, oldest first."""
    runs: list[Run] = []
    for ref in refs or [None]:
        if ref is not None:
            candidate = _located(ref, root)
            if candidate.is_dir() and not (candidate / META_FILE).exists():
                inside = list_runs(candidate)
                if not inside:
                    raise RunFormatError(f"{ref}: neither a run directory nor a directory of runs")
                runs += inside
                continue
        runs.append(resolve_run(ref, root))
    return runs
