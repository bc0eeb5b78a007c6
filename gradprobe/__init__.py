"""gradprobe: gradient diagnostics and clipping for PyTorch and TensorFlow/Keras.

Public API: :func:`watch` records (and optionally clips) a training loop,
:func:`clipper` clips gradients in a loop you own, :func:`parse_spec` checks a
clip policy spec, :func:`load_run` reads a recorded run into pandas. Framework support is imported lazily: importing
gradprobe imports neither torch nor TensorFlow.
"""

from gradprobe._version import __version__
from gradprobe.api import Recording, watch
from gradprobe.errors import GradprobeError, RunFormatError
from gradprobe.policies import clipper, parse_spec
from gradprobe.store import Run, list_runs, load_run

__all__ = [
    "GradprobeError", "Recording", "Run", "RunFormatError", "__version__", "clipper", "list_runs", "load_run",
    "parse_spec", "watch",
]
