"""Compatibility alias: :class:`TFClipper` lives in :mod:`gradprobe.tensorflow.clip` (imported from here
by scripts written against the first releases). It imports TensorFlow."""

from gradprobe.tensorflow.clip import TFClipper, skip_or_apply

__all__ = ["TFClipper", "skip_or_apply"]
