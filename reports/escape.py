"""Escaping recorded names (layers, scripts, error messages) for every format that shows them.

Names come from other people's models and scripts, so they may hold HTML, Markdown, rich markup or
terminal control sequences; each renderer shows them literally through one of these functions.
"""

from __future__ import annotations

import html
import re

from rich.markup import escape as _rich_escape

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def visible(text: object) -> str:
    """``text`` with control characters (escape sequences, bell, carriage return...) written as
    ``\\xNN``, so that nothing recorded can drive a terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def terminal(text: object) -> str:
    """``text`` shown literally by rich: control characters visible, markup escaped."""
    return _rich_escape(visible(text))


def html_text(text: object) -> str:
    """``text`` shown literally in HTML text or a quoted attribute."""
    return html.escape(visible(text))


def markdown(text: object) -> str:
    """``text`` shown literally in Markdown (tables included): line breaks as spaces, other control
    characters visible, HTML characters as entities, Markdown punctuation backslash-escaped."""
    flat = str(text).replace("\r", " ").replace("\n", " ")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(visible(flat), quote=False))


def mpl(text: object) -> str:
    """``text`` shown literally by matplotlib (no mathtext: ``$`` escaped; control characters visible)."""
    return visible(text).replace("$", r"\$")
