"""A recording session: the run directory plus the settings shared by every framework adapter."""

from __future__ import annotations

import math
import os
import platform
import socket
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from gradprobe._version import __version__
from gradprobe.errors import GradprobeError
from gradprobe.recording.ranks import SilentWriter, rank_layout, records, shared_run_dir
from gradprobe.store.writer import DEFAULT_ROOT, RunWriter

if TYPE_CHECKING:
    from gradprobe.policies import Policy

DEFAULT_EVERY = 10
DEFAULT_FLUSH_EVERY = 100
DEFAULT_FLUSH_SECONDS = 30.0
# Device memory held between flushes is flush_every x 24 bytes of step figures plus
# (flush_every / every + 1) x 20 bytes per parameter tensor: at the ceiling, 240 KB, and at most
# 200 KB a tensor with --every 1.
MAX_FLUSH_EVERY = 10_000
MAX_EVERY = 1_000_000_000  # the per-layer sampling interval stays a 32-bit step count on every device
LIVE_FLUSH_SECONDS = 2.0  # how often a live view on a terminal is refreshed, at most


class StopTraining(BaseException):
    """Raised inside the training loop to end it cleanly once ``max_steps`` steps are recorded.

    It derives from ``BaseException`` so that a script's ``except Exception``
    does not swallow it; the launcher turns it into a normal exit (code 0).
    """


@dataclass(frozen=True)
class Sampling:
    """How often gradprobe records and writes.

    ``every``: per-layer statistics every N optimizer steps (the global norm,
    loss and clip scale are recorded at every step). ``flush_every`` /
    ``flush_seconds``: device buffers are copied to the host and written as a
    Parquet part every N steps or after this many seconds, whichever comes
    first; a hard crash loses at most that interval. Before the first full
    interval a buffer also flushes after its steps 1, 2, 4, 8 ... (see
    :meth:`early`), so a run shows on disk and in the live view from its
    first step, at the cost of a handful of extra device reads. ``signals``:
    on the sampled steps, also measure the update each optimizer step applied
    and the gradient norm of each accumulated micro-batch (PyTorch: the
    update-to-weight ratios and the gradient noise scale); ``False`` leaves
    both out, for the cheapest recording.
    """

    every: int = DEFAULT_EVERY
    flush_every: int = DEFAULT_FLUSH_EVERY
    flush_seconds: float = DEFAULT_FLUSH_SECONDS
    signals: bool = True

    def __post_init__(self) -> None:
        for field, ceiling in (("every", MAX_EVERY), ("flush_every", MAX_FLUSH_EVERY)):
            value = getattr(self, field)
            if not 1 <= int(value) <= ceiling:
                raise GradprobeError(f"--{field.replace('_', '-')} must be between 1 and {ceiling} (got {value})")
        if not 0 < self.flush_seconds < math.inf:
            raise GradprobeError(f"flush_seconds must be a positive number of seconds (got {self.flush_seconds})")

    def early(self, recorded: int) -> bool:
        """Whether a buffer that has now recorded ``recorded`` steps flushes ahead of ``flush_every``:
        after steps 1, 2, 4, 8 ... while they are below ``flush_every``."""
        return 0 < recorded < self.flush_every and recorded & (recorded - 1) == 0


class Session:
    """Everything recorded in one run: the writer, the layer and optimizer tables, step counts.

    Framework adapters register layers and optimizers, then hand flushed host
    arrays to :meth:`append`. ``clip`` (a spec or a policy) is the clip policy
    the adapters apply at every step. ``max_steps`` ends training with
    :class:`StopTraining` once any optimizer has taken that many steps.
    ``seed`` is noted in ``run.json`` when the launcher seeded the script.
    ``skip_samples``: dataset indices each named DataLoader leaves out (``--skip-samples``).
    In a distributed launch rank 0 records, or every rank with ``all_ranks``,
    all into one run directory (see :mod:`gradprobe.recording.ranks`); a rank
    that does not record still clips and stops at ``max_steps``, and its
    ``path`` is None.
    """

    def __init__(
        self,
        out: str | os.PathLike = DEFAULT_ROOT,
        name: str | None = None,
        script: str | None = None,
        argv: Iterable[str] | None = None,
        sampling: Sampling | None = None,
        max_steps: int | None = None,
        clip: "str | Policy | None" = None,
        seed: int | None = None,
        all_ranks: bool = False,
        skip_samples: dict[str, frozenset[int]] | None = None,
    ):
        if max_steps is not None and max_steps < 1:
            raise GradprobeError("--max-steps must be a positive integer")
        self.policy = _as_policy(clip)
        self.sampling = sampling or Sampling()
        self.max_steps = max_steps
        self.skip_samples = dict(skip_samples or {})
        self.layout = rank_layout()
        self.recording = records(self.layout, all_ranks)
        stem = Path(script).stem if script else "session"
        self._place = (os.path.abspath(out), stem, name)  # fixed before the script can change directory
        self._start_dir = os.getcwd()
        self.ending: str | None = None  # the status the script ended with, once the launcher knows it
        path = shared_run_dir(out, stem, name, self.layout) if self.recording else None
        self.layers: list[dict[str, Any]] = []
        self.optimizers: list[dict[str, Any]] = []
        self.recorders: list = []
        self.listeners: list[Callable[[dict, dict], None]] = []  # called with each flush's tables (live view)
        # The time interval between flushes; a live view on a terminal shortens it (LIVE_FLUSH_SECONDS).
        self.flush_seconds = self.sampling.flush_seconds
        self.closed = False
        self._lock = threading.RLock()  # several threads may train at once
        meta = {
            "gradprobe_version": __version__,
            "status": "running",
            "framework": None,
            "script": str(Path(script).resolve()) if script else None,
            "argv": list(argv) if argv is not None else list(sys.argv),
            "cwd": os.getcwd(),
            "host": socket.gethostname(),
            "python": platform.python_version(),
            "start_time": time.time(),
            "end_time": None,
            "exit_code": None,
            "error": None,
            "stop_reason": None,
            "clip": str(self.policy) if self.policy is not None else None,
            "sampling": asdict(self.sampling),
            "max_steps": max_steps,
            "seed": seed,
            **({"skip_samples": {name: len(s) for name, s in self.skip_samples.items()}} if skip_samples else {}),
            "world": {**self.layout, "all_ranks": all_ranks},
            "optimizers": self.optimizers,
            "layers": self.layers,
            "progress": {"steps": 0, "flushes": 0},
            "warnings": [],
        }
        rank = self.layout["rank"]
        self.writer = RunWriter(path, meta, rank=rank) if path is not None else SilentWriter(meta, rank)

    @property
    def path(self) -> Path | None:
        """The run directory (None on a rank that does not record)."""
        return self.writer.path

    @property
    def shown_path(self) -> Path | None:
        """The run directory as messages show it: relative to the directory gradprobe started in when
        it lies below it (as ``--out`` was typed), else absolute."""
        path = self.path
        if path is None or not path.is_relative_to(self._start_dir):
            return path
        return path.relative_to(self._start_dir)

    def record_every_rank(self) -> None:
        """The model is sharded: each rank holds part of every gradient, so every rank records."""
        self.writer.meta["world"]["sharded"] = True
        if not self.recording:
            self.recording = True
            path = shared_run_dir(*self._place, self.layout)
            self.writer = RunWriter(path, self.writer.meta, rank=self.layout["rank"])
        self.writer.write_meta()

    def set_framework(self, name: str, version: str) -> None:
        """Record which framework the run trains with."""
        self.writer.update(framework={"name": name, "version": version})

    def add_optimizer(self, info: dict[str, Any]) -> int:
        """Register an optimizer (class name, param groups...) and return its index."""
        with self._lock:
            index = len(self.optimizers)
            self.optimizers.append({"index": index, **info})
            self.writer.write_meta()
        return index

    def note_optimizer_event(self, optimizer: int, event: str, step: int, **info: Any) -> None:
        """Count one more step of ``optimizer`` showing ``event`` in its ``run.json`` entry (``calls``,
        ``first_step``, ``last_step`` plus ``info`` as first seen); written at the next flush. Events:
        ``clip_after_step`` (the script clipped gradients the update had already used, ``max_norm``) and
        ``loss_divided_twice`` (``micro_batches``: each backward's loss was divided by their count twice)."""
        entry = self.optimizers[optimizer].setdefault(event, {"calls": 0, "first_step": step, **info})
        entry["calls"] += 1
        entry["last_step"] = step

    def add_layers(self, layers: list[dict[str, Any]]) -> list[int]:
        """Register parameters (name, shape, numel, dtype, group, optimizer) and return their ids.

        Names are made unique by appending ``#2``, ``#3``... to repeats.
        """
        with self._lock:
            taken = {layer["name"] for layer in self.layers}
            ids = []
            for layer in layers:
                name, n = layer["name"], 1
                while name in taken:
                    n += 1
                    name = f"{layer['name']}#{n}"
                taken.add(name)
                ids.append(len(self.layers))
                self.layers.append({"id": ids[-1], **layer, "name": name})
            self.writer.write_meta()
        return ids

    def append(self, steps: dict, layers: dict) -> None:
        """Write one flush: host arrays for the ``steps`` and ``layers`` tables."""
        with self._lock:
            if self.writer.append("steps", steps) and self.writer.append("layers", layers):
                progress = self.writer.meta["progress"]
                progress["steps"] += len(steps["step"])
                progress["flushes"] += 1
                self.writer.write_meta()
        for listener in self.listeners:
            listener(steps, layers)

    def flush_due(self, recorded: int, idle: float) -> bool:
        """Whether a buffer that has recorded ``recorded`` steps in all, and last flushed ``idle``
        seconds ago, flushes now (besides when it is full): early, at each multiple of ``flush_every``
        (so the intervals line up again after early or timed flushes), or after ``flush_seconds``.
        Host-side figures only, no device read."""
        sampling = self.sampling
        aligned = recorded > 0 and recorded % sampling.flush_every == 0
        return aligned or sampling.early(recorded) or idle > self.flush_seconds

    def warn(self, message: str) -> None:
        """Tell the user, in one line on stderr, that the run is not what the script trained,
        and note it under ``warnings`` in ``run.json``."""
        print(f"gradprobe: warning: {message}", file=sys.stderr)
        self.writer.meta.setdefault("warnings", []).append(message)
        self.writer.write_meta()

    @property
    def recorded_steps(self) -> int:
        """Steps written to the run so far (every optimizer together)."""
        return self.writer.meta["progress"]["steps"]

    def count_step(self, optimizer_steps: int) -> bool:
        """Note that an optimizer reached ``optimizer_steps`` steps; True when max_steps is reached."""
        return self.max_steps is not None and optimizer_steps >= self.max_steps

    def close(self, status: str, exit_code: int | None = None, error: str | None = None,
              stop_reason: str | None = None) -> None:
        """Mark the run ended; idempotent."""
        if self.closed:
            return
        self.closed = True
        self.writer.close(
            status=status, exit_code=exit_code, error=error, stop_reason=stop_reason, end_time=time.time()
        )


def _as_policy(clip: str | Policy | None) -> Policy | None:
    """The clip policy of ``clip``; the policies (and numpy) are imported only when there is one."""
    if clip is None:
        return None
    from gradprobe.policies import as_policy

    return as_policy(clip)


def describe_exception(exc: BaseException) -> str:
    """One line: the exception type and message, as the run records it."""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]
