"""Runs that span several processes: which ranks record, and the one run directory they share.

Under ``torchrun`` (or ``gradprobe profile --nproc-per-node N``, which starts
it) every rank runs the script under its own session. Data-parallel ranks
hold identical gradients after the all-reduce, so rank 0 records and the
others only apply the clip policy; ``all_ranks`` records every rank, so that
ranks that disagree can be found. All recording ranks write into one run
directory: rank 0 creates it and publishes its path through the launcher's
key-value store (``torchrun``'s agent store), or every rank uses ``--name``,
which suits launchers without that store. Each rank writes its own parts
(``parts/steps-r{rank}-*.parquet``); on several machines the run root must be
shared storage.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping

from gradprobe.store.writer import RunWriter, create_run_dir

STORE_TIMEOUT_S = 300.0
NAME_WAIT_S = 120.0


def rank_layout() -> dict[str, int]:
    """This process's rank, the world size and the local rank, from the launcher's environment."""
    env = os.environ
    return {
        "rank": int(env.get("RANK", 0)),
        "world_size": int(env.get("WORLD_SIZE", 1)),
        "local_rank": int(env.get("LOCAL_RANK", 0)),
    }


def records(layout: Mapping[str, int], all_ranks: bool) -> bool:
    """Whether this rank records: rank 0 always, the others with ``all_ranks``."""
    return all_ranks or layout["rank"] == 0


def _agent_store():
    """The ``torchrun`` agent's key-value store, or None outside ``torchrun``."""
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "MASTER_ADDR" not in env:
        return None
    import torch.distributed as dist

    return dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False,
                         timeout=timedelta(seconds=STORE_TIMEOUT_S))


def _store_key() -> str:
    env = os.environ
    return f"gradprobe/run_dir/{env.get('TORCHELASTIC_RUN_ID', '')}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def _wait_for(path: Path) -> Path:
    deadline = time.monotonic() + NAME_WAIT_S
    while not path.is_dir() and time.monotonic() < deadline:
        time.sleep(0.2)
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_run_dir(out: str | os.PathLike, stem: str, name: str | None, layout: Mapping[str, int]) -> Path:
    """The run directory of this rank: one for all ranks of a launch, created by rank 0."""
    if layout["world_size"] <= 1:
        return create_run_dir(out, stem, name)
    store = _agent_store()
    if layout["rank"] == 0:
        path = create_run_dir(out, stem, name)
        if store is not None:
            store.set(_store_key(), str(path.resolve()))
        return path
    if store is not None:
        return Path(store.get(_store_key()).decode())
    if name is not None:
        return _wait_for(Path(os.path.abspath(out)) / name)
    print(f"gradprobe: rank {layout['rank']} cannot find rank 0's run directory outside torchrun; "
          "give every rank the same --name to share one", file=sys.stderr)
    return create_run_dir(out, f"{stem}-rank{layout['rank']}")


class SilentWriter(RunWriter):
    """The writer of a rank that does not record: keeps the metadata in memory and writes nothing."""

    def __init__(self, meta: Mapping[str, Any], rank: int):
        self.path = None
        self.rank = rank
        self.meta = dict(meta)
        self.failed = False
        self._lock = threading.RLock()

    def write_meta(self) -> None:
        """Nothing to write."""

    def append(self, table: str, columns: Mapping[str, Any]) -> bool:
        """Nothing to write."""
        return False

    def close(self, **fields: Any) -> None:
        """Keep the final metadata in memory."""
        self.meta.update(fields)
