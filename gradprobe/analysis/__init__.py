"""Diagnostics and clip recommendations computed from a recorded run (pandas/numpy/scipy only).

:func:`diagnose` returns :class:`Finding` objects (explosion, vanishing,
spike, nonfinite, dead_layer, clip_saturation, imbalance); each detector's
module documents its thresholds and severity levels. :func:`recommend` turns
the history into clip specs with a what-if replayed by the policies' own math.
"""

from gradprobe.analysis.diagnose import diagnose
from gradprobe.analysis.findings import KINDS, SEVERITIES, Finding
from gradprobe.analysis.groups import parse_groups
from gradprobe.analysis.recommend import STRATEGIES, Recommendation, recommend
from gradprobe.store.streams import Stream, split_streams

__all__ = ["KINDS", "SEVERITIES", "STRATEGIES", "Finding", "Recommendation", "Stream", "diagnose", "parse_groups",
           "recommend", "split_streams"]
