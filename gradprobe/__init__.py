"""gradprobe: gradient diagnostics and clipping for PyTorch and TensorFlow/Keras.

Public API: :func:`watch` records (and optionally clips) a training loop,
:func:`clipper` clips gradients in a loop you own, :func:`parse_spec` checks a
clip policy spec, :func:`load_run` reads a recorded run into pandas,
:func:`task_gradients` measures each task's gradient on a multi-task model's
shared parameters. Framework support is imported lazily: importing gradprobe
imports neither torch nor TensorFlow.
"""

from gradprobe._version import __version__
from gradprobe.api import Recording, clipper, watch
from gradprobe.errors import GradprobeError, RunFormatError
from gradprobe.policies import parse_spec
from gradprobe.store import Run, list_runs, load_run
from gradprobe.tasks import TaskGradients, task_gradients

__all__ = [
    "GradprobeError", "Recording", "Run", "RunFormatError", "TaskGradients", "__version__", "clipper", "list_runs",
    "load_run", "parse_spec", "task_gradients", "watch",
]
