"""The data of the interactive HTML charts: every series downsampled in Python to a few thousand
points (minimum, median and maximum per bin, so a spike survives), as plain JSON values.

A 1M-step run becomes at most :data:`MAX_BINS` points per line and :data:`MAX_LAYER_BINS` columns
per layer, so the page stays light whatever the length of the run.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from gradprobe.analysis import Stream
from gradprobe.analysis.robust import bin_medians, log10_norms
from gradprobe.analysis.update_ratio import ratios
from gradprobe.reports.figures import WHOLE_RUN_FRACTION
from gradprobe.reports.series import envelope, nonfinite_bins
from gradprobe.reports.summary import Report, optimizer_label

MAX_BINS = 2000
MAX_LAYER_BINS = 300
DIGITS = 4


def compact(values: np.ndarray, digits: int = DIGITS) -> list[float | None]:
    """``values`` rounded to ``digits`` significant digits, None where not finite."""
    values = np.asarray(values, dtype=np.float64)
    return [float(f"{v:.{digits}g}") if np.isfinite(v) else None for v in values.tolist()]


def _band(values: np.ndarray) -> dict[str, Any]:
    """Median per bin, and the minimum and maximum per bin when the series was downsampled."""
    start, low, mid, high = envelope(values, MAX_BINS)
    out: dict[str, Any] = {"mid": compact(mid)}
    if len(start) < len(values):
        out.update(low=compact(low), high=compact(high))
    return out


def _axes(steps: np.ndarray, seconds: np.ndarray, index: np.ndarray) -> dict[str, list]:
    """The step and the wall-clock second of each bin's first row."""
    return {"step": steps[index].tolist(), "time": compact(seconds[index], 6)}


def _at_steps(steps: np.ndarray, seconds: np.ndarray, at: Sequence[float]) -> list[float | None]:
    return compact(np.interp(np.asarray(at, dtype=np.float64), steps, seconds), 6) if len(steps) else []


def _findings(report: Report, stream: Stream, steps: np.ndarray, seconds: np.ndarray) -> list[dict]:
    """Findings located in time (a span, or the steps of each spike); whole-run ones are left out."""
    whole = WHOLE_RUN_FRACTION * max(stream.last_step - stream.first_step, 1)
    out = []
    for finding in report.findings:
        if finding.evidence.get("optimizer") != stream.optimizer:
            continue
        first, last = finding.steps
        if finding.kind == "spike":
            at = [int(s) for s in finding.evidence.get("spike_steps") or [first]]
            spans = [(s, s) for s in at]
        elif last - first < whole:
            spans = [(first, last)]
        else:
            continue
        starts, ends = zip(*spans)
        out.append({"kind": finding.kind, "severity": finding.severity,
                    "step": [list(pair) for pair in spans],
                    "time": [list(pair) for pair in zip(_at_steps(steps, seconds, starts),
                                                        _at_steps(steps, seconds, ends))]})
    return out


def _thresholds(report: Report, stream: Stream, steps: np.ndarray, seconds: np.ndarray) -> list[dict]:
    """The recommended global thresholds replayed on these steps, downsampled."""
    out = []
    for rec in report.recommendations:
        series = rec.threshold_series(stream.optimizer)
        if series is None or not len(series[0]):
            continue
        x, y = (np.asarray(a, dtype=np.float64) for a in series)
        start, _, mid, _ = envelope(y, MAX_BINS)
        out.append({"spec": rec.spec, "step": compact(x[start], 9), "time": _at_steps(steps, seconds, x[start]),
                    "mid": compact(mid)})
    return out


def _layers(stream: Stream, steps: np.ndarray, seconds: np.ndarray) -> dict[str, Any] | None:
    """Per layer, log10 of the gradient norm (and of the gradient-to-weight and the measured
    update-to-weight norm ratios) per bin of sampled steps; None without per-layer rows."""
    if not (len(stream.sampled) and len(stream.names)):
        return None
    logs = log10_norms(stream.matrix("norm"))
    start, binned = bin_medians(logs, MAX_LAYER_BINS)
    at = stream.sampled[start]
    out: dict[str, Any] = {
        "names": stream.names, "groups": [str(g) for g in stream.table["group"]],
        "vector": stream.is_vector.tolist(), "step": at.tolist(), "time": _at_steps(steps, seconds, at),
        "log_norm": [compact(column, 3) for column in np.asarray(binned).T],
    }
    weights = log10_norms(stream.matrix("param_norm"))
    if np.isfinite(weights).any():
        _, ratio = bin_medians(logs - weights, MAX_LAYER_BINS)
        out["log_ratio"] = [compact(column, 3) for column in np.asarray(ratio).T]
    updates = ratios(stream)
    if updates is not None:
        _, binned_updates = bin_medians(log10_norms(updates), MAX_LAYER_BINS)
        out["log_update_ratio"] = [compact(column, 3) for column in np.asarray(binned_updates).T]
    return out


def _differs(a: np.ndarray, b: np.ndarray) -> bool:
    both = np.isfinite(a) & np.isfinite(b)
    return bool(both.any() and not np.allclose(a[both], b[both], rtol=1e-6))


def stream_data(report: Report, stream: Stream, label: str) -> dict[str, Any]:
    """Everything the charts draw for one optimizer stream of one run."""
    table = stream.steps
    steps = table["step"].to_numpy(dtype=np.int64)
    times = table["time"].to_numpy(dtype=np.float64)
    seconds = times - np.nanmin(times) if np.isfinite(times).any() else np.zeros(len(steps))
    norms = table["global_norm"].to_numpy(dtype=np.float64)
    start = envelope(norms, MAX_BINS)[0]
    bad = nonfinite_bins(norms, MAX_BINS)
    data: dict[str, Any] = {"label": label, **_axes(steps, seconds, start),
                            "norm": _band(np.where(norms > 0, norms, np.nan)),
                            "nonfinite": _axes(steps, seconds, start[bad])}
    post = table["global_norm_post"].to_numpy(dtype=np.float64)
    if _differs(norms, post):
        data["post"] = _band(post)
    recorded = table["clip_threshold"].to_numpy(dtype=np.float64)
    if np.isfinite(recorded).any():
        data["recorded_threshold"] = _band(recorded)["mid"]
    scale = table["clip_scale"].to_numpy(dtype=np.float64)
    if np.isfinite(recorded).any() or (np.isfinite(scale) & (scale < 1)).any():
        data["scale"] = _band(scale)
    loss = table["loss"].to_numpy(dtype=np.float64)
    if np.isfinite(loss).any():
        data["loss"] = _band(loss)
    data["thresholds"] = _thresholds(report, stream, steps, seconds)
    data["findings"] = _findings(report, stream, steps, seconds)
    data["layers"] = _layers(stream, steps, seconds)
    return data


def chart_data(reports: Sequence[Report]) -> dict[str, Any]:
    """The charts' data for one or several runs: one entry per optimizer stream, labelled by run
    (when there are several runs) and optimizer (when a run has several)."""
    streams = []
    for report in reports:
        for stream in report.streams:
            parts = [report.name] if len(reports) > 1 else []
            if len(report.streams) > 1 or not parts:
                parts.append(optimizer_label(report.run, stream.optimizer))
            streams.append(stream_data(report, stream, " / ".join(parts)))
    return {"runs": [report.name for report in reports], "streams": streams}
