"""Unicode sparklines of norm series, on a log scale."""

from __future__ import annotations

import numpy as np

from gradprobe.analysis.robust import log10_norms
from gradprobe.reports.series import envelope, nonfinite_bins

BARS = "▁▂▃▄▅▆▇█"
NONFINITE = "!"
EMPTY = " "


def sparkline(values: np.ndarray, width: int = 40, log: bool = True) -> str:
    """One character per bin of ``values`` (at most ``width``): the bin's maximum, scaled between
    the series' minimum and maximum (log10 when ``log``); ``!`` marks bins with NaN/Inf."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return ""
    scaled = log10_norms(values) if log else np.where(np.isfinite(values), values, np.nan)
    _, _, _, high = envelope(scaled, width)
    bad = nonfinite_bins(values, width)
    finite = high[np.isfinite(high)]
    if finite.size == 0:
        return "".join(NONFINITE if b else EMPTY for b in bad)
    low, top = finite.min(), finite.max()
    span = top - low if top > low else 1.0
    chars = []
    for value, broken in zip(high, bad):
        if broken:
            chars.append(NONFINITE)
        elif not np.isfinite(value):
            chars.append(EMPTY)
        else:
            chars.append(BARS[min(len(BARS) - 1, int((value - low) / span * len(BARS)))])
    return "".join(chars)
