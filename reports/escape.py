"""Escaping recorded names (layers, scripts, error messages) for every format that shows them.

Names come from other people's models and scripts, so they may hold HTML, Markdown, rich markup,
terminal control sequences or bidi overrides; each renderer shows them literally through one of these
functions, all built on :func:`gradprobe.errors.visible`.
"""

from __future__ import annotations

import html
import re

from rich.markup import escape as _rich_escape

from gradprobe.errors import visible

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def terminal(text: object) -> str:
    """``text`` shown literally by rich: control characters visible, markup escaped."""
    return _rich_escape(visible(text))


def html_text(text: object) -> str:
    """``text`` shown literally in HTML text or a quoted attribute."""
    return html.escape(visible(text))


def html_with_code(text: object) -> str:
    """:func:`html_text`, with the `backticked` spans of advice (commands, options) as ``<code>``."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html_text(text))


def markdown(text: object) -> str:
    """``text`` shown literally in Markdown (tables included): line breaks as spaces, other control
    characters visible, HTML characters as entities, Markdown punctuation backslash-escaped."""
    flat = str(text).replace("\r", " ").replace("\n", " ")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(visible(flat), quote=False))


def mpl(text: object) -> str:
    """``text`` shown literally by matplotlib (no mathtext: ``$`` escaped; control characters visible)."""
    return visible(text).replace("$", r"\$")
