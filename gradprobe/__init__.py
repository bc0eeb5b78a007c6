"""gradprobe: gradient diagnostics and clipping for PyTorch and TensorFlow/Keras.

Public API: :func:`watch` records a training loop, :func:`load_run` reads a
recorded run into pandas. Framework support is imported lazily: importing
gradprobe imports neither torch nor TensorFlow.
"""

from gradprobe._version import __version__
from gradprobe.api import Recording, watch
from gradprobe.errors import GradprobeError, RunFormatError
from gradprobe.store import Run, list_runs, load_run

__all__ = ["GradprobeError", "Recording", "Run", "RunFormatError", "__version__", "list_runs", "load_run", "watch"]
