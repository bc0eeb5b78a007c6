"""Per-task gradients on shared parameters, for multi-task training.

In a multi-task model the heads' gradients only come from their own task, but
the shared trunk receives the sum of every task's gradient. :func:`task_gradients`
measures each task's gradient on the shared parameters separately, every
``every`` calls: its L2 norm, and the cosine similarity of every pair of tasks
(negative: the tasks pull the trunk in opposite directions, as in PCGrad's
"conflicting gradients"). While a run is being recorded (``gradprobe profile``,
``gradprobe.watch``) the numbers go into the run's ``tasks`` table, where the
``task_conflict`` and ``task_imbalance`` findings read them.

PyTorch::

    loss1, loss2 = loss_fn1(out1, y1), loss_fn2(out2, y2)
    gradprobe.task_gradients({"class": loss1, "reg": loss2}, shared=model.trunk)
    (loss1 + loss2).backward()

TensorFlow/Keras (eager loops; the tape must be persistent)::

    with tf.GradientTape(persistent=True) as tape:
        out1, out2 = model(x)
        loss1, loss2 = loss_fn1(y1, out1), loss_fn2(y2, out2)
    gradprobe.task_gradients({"class": loss1, "reg": loss2}, shared=model.trunk, tape=tape)
    grads = tape.gradient(loss1 + loss2, model.trainable_variables)

Each sampled call costs one extra backward pass per task over the graph and one
device-to-host copy of a k x k matrix; the other calls only check their arguments.
"""

from __future__ import annotations

import sys
import time
import weakref
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Mapping

import numpy as np

from gradprobe.errors import GradprobeError

DEFAULT_EVERY = 10


@dataclass
class TaskGradients:
    """One sampled step: each task's gradient norm on the shared parameters and their pairwise cosines."""

    step: int
    norms: dict[str, float]
    cosines: dict[tuple[str, str], float]


def from_gram(step: int, names: list[str], gram: np.ndarray) -> TaskGradients:
    """Norms and cosines from the Gram matrix ``gram[i, j] = <g_i, g_j>`` of the tasks' gradients.

    A pair with a zero (or non-finite) gradient has a NaN cosine.
    """
    gram = np.asarray(gram, dtype=np.float64)
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    cosines = {}
    for i, j in combinations(range(len(names)), 2):
        denominator = norms[i] * norms[j]
        ok = np.isfinite(denominator) and denominator > 0
        cosines[(names[i], names[j])] = float(np.clip(gram[i, j] / denominator, -1, 1)) if ok else float("nan")
    return TaskGradients(step, {name: float(n) for name, n in zip(names, norms)}, cosines)


class TaskLog:
    """Counts the calls of one session (or of none) and buffers the rows of its ``tasks`` table.

    The rows are written when the session flushes its other tables.
    """

    def __init__(self, session: Any | None):
        self._session = weakref.ref(session) if session is not None else None  # the session owns this log
        self.calls = 0
        self.rows: list[tuple] = []
        if session is not None:
            session.listeners.append(lambda _steps, _layers: self.flush())

    @property
    def session(self) -> Any | None:
        """The session written to (``None``: nothing records)."""
        return self._session() if self._session is not None else None

    def add(self, result: TaskGradients) -> None:
        """Buffer the rows of one sampled step."""
        if self._session is None:
            return
        now = time.time()
        for name, norm in result.norms.items():
            self.rows.append((result.step, now, name, "", norm, np.nan))
        for (a, b), cosine in result.cosines.items():
            self.rows.append((result.step, now, a, b, np.nan, cosine))

    def flush(self) -> None:
        """Append the buffered rows to the run as one ``tasks`` part."""
        session = self.session
        if not self.rows or session is None:
            return
        rows, self.rows = self.rows, []
        step, when, task, other, norm, cosine = zip(*rows)
        n = len(rows)
        session.writer.append("tasks", {
            "step": np.asarray(step, dtype=np.int64),
            "optimizer": np.zeros(n, dtype=np.int16),
            "rank": np.full(n, session.layout["rank"], dtype=np.int16),
            "time": np.asarray(when, dtype=np.float64),
            "task": np.asarray(task, dtype=object),
            "other": np.asarray(other, dtype=object),
            "norm": np.asarray(norm, dtype=np.float32),
            "cosine": np.asarray(cosine, dtype=np.float32),
        })


_logs: "weakref.WeakKeyDictionary[Any, TaskLog]" = weakref.WeakKeyDictionary()
_unrecorded = TaskLog(None)


def _log(session: Any | None) -> TaskLog:
    if session is None:
        return _unrecorded
    if session not in _logs:
        _logs[session] = TaskLog(session)
    return _logs[session]


def _check(losses: Any, every: int) -> dict[str, Any]:
    if not isinstance(losses, Mapping) or len(losses) < 2:
        raise GradprobeError("task_gradients needs a dict of at least two tasks' losses, e.g. "
                             "{'task1': loss1, 'task2': loss2}")
    if not all(isinstance(name, str) and name and "/" not in name for name in losses):
        raise GradprobeError("task_gradients: task names must be non-empty strings without '/'")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise GradprobeError(f"task_gradients: every must be a positive integer, not {every!r}")
    return dict(losses)


def _backend(loss: Any):
    """The framework side for ``loss``: PyTorch or TensorFlow (only those already imported)."""
    torch, tf = sys.modules.get("torch"), sys.modules.get("tensorflow")
    if torch is not None and isinstance(loss, torch.Tensor):
        from gradprobe.pytorch import tasks
    elif tf is not None and tf.is_tensor(loss):
        from gradprobe.tensorflow import tasks
    else:
        raise GradprobeError(f"task_gradients: losses must be PyTorch or TensorFlow scalar tensors, "
                             f"not {type(loss).__name__}")
    return tasks


def task_gradients(losses: Mapping[str, Any], shared: Any, every: int = DEFAULT_EVERY, tape: Any = None,
                   step: int | None = None) -> TaskGradients | None:
    """Every ``every`` calls, measure each task's gradient on the ``shared`` parameters.

    ``losses``: ``{task name: scalar loss}`` (two or more tasks), before
    ``backward()`` / ``tape.gradient``. ``shared``: the shared trunk (a
    ``torch.nn.Module`` or a Keras layer/model) or a list of its parameters /
    variables. ``tape``: the ``tf.GradientTape(persistent=True)`` that
    recorded the losses (TensorFlow only). ``step``: the step to record
    (default: the number of earlier calls, which is the optimizer step when
    called once per step). Returns the sampled step's norms and cosines, or
    ``None`` on the calls in between (and if measuring fails: training goes on).
    """
    tasks = _check(losses, every)
    backend = _backend(next(iter(tasks.values())))
    backend.check(tasks, shared, tape)
    log = _log(backend.active_session())
    index = log.calls
    log.calls += 1
    if index % every:
        return None
    try:
        result = from_gram(index if step is None else int(step), list(tasks), backend.gram(tasks, shared, tape))
        log.add(result)
    except Exception as exc:  # measuring must never stop training
        print(f"gradprobe: task_gradients failed ({type(exc).__name__}: {exc}); training continues",
              file=sys.stderr)
        return None
    return result
