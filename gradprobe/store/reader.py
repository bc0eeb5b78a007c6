"""Reading run directories into pandas: ``load_run`` and ``list_runs``."""

from __future__ import annotations

import json
import os
import sys
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gradprobe.errors import RunFormatError
from gradprobe.store.schema import FORMAT_VERSION, STATUSES, TABLES
from gradprobe.store.writer import DEFAULT_ROOT, META_FILE, PARTS_DIR

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LAYER_FIELDS = ("id", "name", "shape", "numel", "dtype", "group")


def read_meta(path: Path) -> dict[str, Any]:
    """Read and validate ``run.json`` of the run directory ``path``."""
    file = Path(path) / META_FILE
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunFormatError(f"{file}: not found (is {path} a gradprobe run directory?)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunFormatError(f"{file}: cannot be read ({exc})") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunFormatError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
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
    layers = meta.get("layers", [])
    if not isinstance(layers, list) or not all(
        isinstance(layer, dict) and all(k in layer for k in LAYER_FIELDS) for layer in layers
    ):
        raise RunFormatError(f"{file}: 'layers' must be a list of objects with {', '.join(LAYER_FIELDS)}")
    return meta


def read_table(path: Path, table: str) -> pd.DataFrame:
    """Concatenate every Parquet part of ``table`` in the run directory ``path``.

    A part that cannot be read (for instance truncated by a killed process) is
    skipped with a warning on stderr; a part with missing columns is an error.
    """
    schema = TABLES[table]
    parts = sorted((Path(path) / PARTS_DIR).glob(f"{table}-r*-*.parquet"))
    tables = []
    for part in parts:
        try:
            data = pq.read_table(part)
        except (OSError, pa.ArrowException) as exc:
            print(f"gradprobe: skipping unreadable part {part}: {exc}", file=sys.stderr)
            continue
        missing = [name for name in schema.names if name not in data.column_names]
        if missing:
            raise RunFormatError(f"{part}: missing column(s) {', '.join(missing)}")
        try:
            tables.append(data.select(schema.names).cast(schema))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise RunFormatError(f"{part}: columns have the wrong types ({exc})") from None
    combined = pa.concat_tables(tables) if tables else schema.empty_table()
    frame = combined.to_pandas()
    return frame.sort_values(["optimizer", "step"], kind="stable").reset_index(drop=True)


class Run:
    """A recorded run: ``meta`` (run.json), ``steps``, ``layers`` and ``layer_table``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise RunFormatError(f"{self.path}: not a run directory")
        self.meta = read_meta(self.path)

    @cached_property
    def steps(self) -> pd.DataFrame:
        """One row per optimizer step (see :mod:`gradprobe.store.schema`)."""
        return read_table(self.path, "steps")

    @cached_property
    def layers(self) -> pd.DataFrame:
        """One row per parameter per recorded step, with the layer ``name`` joined in."""
        frame = read_table(self.path, "layers")
        names = self.layer_table["name"]
        codes = names.index.get_indexer(frame["layer"])
        frame["name"] = pd.Categorical.from_codes(codes, categories=pd.Index(names))
        return frame

    @cached_property
    def layer_table(self) -> pd.DataFrame:
        """The recorded parameters, indexed by layer id, in model (depth) order."""
        table = pd.DataFrame(self.meta.get("layers", []), columns=list(LAYER_FIELDS) + ["optimizer"])
        return table.set_index("id", drop=False).sort_index()

    @property
    def name(self) -> str:
        """The run directory's name."""
        return self.path.name

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.meta.get('status')!r})"

    def _repr_html_(self) -> str:
        """Jupyter's view of the run: status, norms with a sparkline, loss, clipping and top findings."""
        from gradprobe.reports.notebook import summary_html

        return summary_html(self)

    def plot(self, groups: Sequence[str] = ()) -> list["Figure"]:
        """The report's matplotlib figures: global norm and loss over time (findings marked), and with
        per-layer statistics the layer heatmap, norm distributions and gradient flow, per optimizer.
        ``groups``: ``NAME=GLOB`` layer groups for the imbalance check."""
        from gradprobe.reports.notebook import run_figures

        return run_figures(self, groups)


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
                print(f"gradprobe: skipping {exc}", file=sys.stderr)
    return sorted(runs, key=lambda run: (run.meta.get("start_time") or 0, run.name))


def resolve_run(ref: str | None, root: str | os.PathLike = DEFAULT_ROOT) -> Run:
    """Find a run from a path, a run name under ``root``, or ``None`` for the latest one."""
    if ref is None:
        runs = list_runs(root)
        if not runs:
            raise RunFormatError(f"no runs under {root}; record one with `gradprobe profile SCRIPT`")
        return runs[-1]
    candidate = Path(ref)
    if not candidate.exists() and (Path(root) / ref).exists():
        candidate = Path(root) / ref
    if not candidate.exists():
        raise RunFormatError(f"{ref}: no such run directory")
    return Run(candidate)
