"""PyTorch adapter: hooks that record gradients wherever the update reads them."""

from gradprobe.pytorch.naming import ParamNamer
from gradprobe.pytorch.recorder import TorchRecorder

__all__ = ["ParamNamer", "TorchRecorder"]
