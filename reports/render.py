"""Rendering a report or a comparison in a named format, for the CLI and for library users."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

from rich.console import Console

from gradprobe.errors import GradprobeError
from gradprobe.reports.progress import Stages
from gradprobe.reports.summary import Report

FORMATS = ("terminal", "html", "markdown", "json")


def render_text(report: Report | Sequence[Report], fmt: str, stages: Stages | None = None) -> str:
    """The report as ``html``, ``markdown`` or ``json`` text (``html`` also overlays several reports)."""
    if fmt == "html":
        from gradprobe.reports.html import render_html

        return render_html(report, stages)
    if fmt == "markdown":
        from gradprobe.reports.markdown import render_markdown

        return render_markdown(report)
    if fmt == "json":
        from gradprobe.reports.json_report import render_json

        return render_json(report)
    raise GradprobeError(f"unknown report format {fmt!r}: choose one of {', '.join(FORMATS)}")


def render_terminal_text(draw, width: int = 120) -> str:
    """What ``draw(console)`` prints, as plain text without colour (for ``-o FILE``)."""
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    draw(console)
    return console.export_text()


def write_output(text: str, path: Path) -> None:
    """Write ``text`` to ``path`` (UTF-8), as a one-line error when that fails.

    A regular file (or a new one) is written beside ``path`` and renamed over it, so another name
    for the old file (a hard link, or the target of a symbolic link at ``path``) keeps its content
    and a reader never sees half a report; a device or a pipe (``/dev/stdout``) is written into.
    """
    try:
        if path.exists() and not path.is_file():
            path.write_text(text, encoding="utf-8")
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise GradprobeError(f"cannot write {path}: {exc.strerror or exc}") from None
