"""Escaping recorded names for the formats that render them: Markdown and matplotlib text."""

from __future__ import annotations

import html
import re

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def markdown(text: object) -> str:
    """``text`` shown literally in Markdown (tables included): HTML characters as entities,
    Markdown punctuation backslash-escaped, line breaks as spaces."""
    escaped = html.escape(str(text), quote=False)
    return _MARKDOWN_SPECIAL.sub(r"\\\1", escaped).replace("\r", " ").replace("\n", " ")


def mpl(text: object) -> str:
    """``text`` shown literally by matplotlib (no mathtext: ``$`` escaped)."""
    return str(text).replace("$", r"\$")
