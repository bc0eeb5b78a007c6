"""Machine-readable report: ``{"run": {...}, "findings": [...], "recommendations": [...], "what_if_notes":
[...], "tunes": [...]}``."""

from __future__ import annotations

import json
from typing import Any

from gradprobe.analysis.findings import plain_json as plain
from gradprobe.reports.summary import Report


def report_document(report: Report) -> dict[str, Any]:
    """The report as the JSON document: run.json fields, findings, recommendations."""
    return {
        "run": plain(report.run.meta),
        "findings": [finding.to_dict() for finding in report.findings],
        "recommendations": [plain(r.to_dict()) for r in report.recommendations],
        "what_if_notes": report.what_if_notes,
        "tunes": [plain(tune.to_dict()) for tune in report.tunes],
    }


def render_json(report: Report) -> str:
    """The JSON document as text (strict JSON: no NaN or Infinity)."""
    return json.dumps(report_document(report), indent=2, allow_nan=False) + "\n"
