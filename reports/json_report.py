"""Machine-readable report: ``{"run": {...}, "findings": [...], "recommendations": [...], "what_if_notes":
[...], "tunes": [...]}``."""

from __future__ import annotations

import json
from typing import Any

from gradprobe.analysis.findings import plain_json as plain
from gradprobe.reports.summary import Report, noise_stats, update_ratio_stats


def report_document(report: Report) -> dict[str, Any]:
    """The report as the JSON document: run.json fields, findings, recommendations, and per
    optimizer the update-to-weight ratios and the gradient noise scale where they were measured."""
    document = {
        "run": plain(report.run.meta),
        "findings": [finding.to_dict() for finding in report.findings],
        "recommendations": [plain(r.to_dict()) for r in report.recommendations],
        "what_if_notes": report.what_if_notes,
        "tunes": [plain(tune.to_dict()) for tune in report.tunes],
    }
    signals = [signal for signal in map(lambda stream: _signals(report, stream), report.streams) if signal]
    if signals:
        document["signals"] = signals
    return document


def _signals(report: Report, stream) -> dict[str, Any] | None:
    """``{"optimizer", "update_ratio": {"median", "layers": {name: median}}, "noise_scale": {...}}``."""
    out: dict[str, Any] = {}
    updates = update_ratio_stats(stream)
    if updates:
        out["update_ratio"] = {"median": updates["median"], "rule_of_thumb": updates["rule_of_thumb"],
                               "layers": dict(zip(stream.names, updates["layers"].tolist()))}
    scale = noise_stats(report.run, stream)
    if scale:
        out["noise_scale"] = {k: v for k, v in scale.items() if k != "over_time"}
    return plain({"optimizer": stream.optimizer, **out}) if out else None


def render_json(report: Report) -> str:
    """The JSON document as text (strict JSON: no NaN or Infinity)."""
    return json.dumps(report_document(report), indent=2, allow_nan=False) + "\n"
