"""gradprobe: gradient diagnostics and clipping for PyTorch and TensorFlow/Keras.

Public API: :func:`watch` records (and optionally clips) a training loop,
:func:`clipper` clips gradients in a loop you own, :func:`parse_spec` checks a
clip policy spec, :func:`load_run` reads a recorded run into pandas,
:func:`task_gradients` measures each task's gradient on a multi-task model's
shared parameters. Each name is imported on first use, so that ``gradprobe
profile`` starts a script without numpy, pandas or pyarrow loaded; framework
support is imported lazily too: importing gradprobe imports neither torch nor
TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gradprobe._lazy import lazy_names
from gradprobe._version import __version__

if TYPE_CHECKING:
    from gradprobe.api import Recording, clipper, watch
    from gradprobe.errors import GradprobeError, RunFormatError
    from gradprobe.policies import parse_spec
    from gradprobe.store import Run, list_runs, load_run
    from gradprobe.tasks import TaskGradients, task_gradients

_HOMES = {
    **dict.fromkeys(("Recording", "clipper", "watch"), "gradprobe.api"),
    **dict.fromkeys(("GradprobeError", "RunFormatError"), "gradprobe.errors"),
    "parse_spec": "gradprobe.policies",
    **dict.fromkeys(("Run", "list_runs", "load_run"), "gradprobe.store"),
    **dict.fromkeys(("TaskGradients", "task_gradients"), "gradprobe.tasks"),
}
__all__ = [
    "GradprobeError", "Recording", "Run", "RunFormatError", "TaskGradients", "__version__", "clipper", "list_runs",
    "load_run", "parse_spec", "task_gradients", "watch",
]
__getattr__, __dir__ = lazy_names(__name__, _HOMES)
