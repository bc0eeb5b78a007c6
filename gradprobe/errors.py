"""Exceptions gradprobe raises for problems the user can fix, and :func:`visible`, which every
message and report passes untrusted text (layer names, paths, error messages) through."""

import re
import unicodedata

# Characters that move the cursor, change the terminal, reorder or hide text instead of showing:
# control characters, format characters (bidi overrides and isolates U+202A-U+202E, U+2066-U+2069,
# zero-width spaces and joiners, BOM), line and paragraph separators, lone surrogates.
_BREAKS = re.compile(r"[\r\n\t]+")
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


class GradprobeError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""


class RunFormatError(GradprobeError):
    """A run directory or one of its files cannot be read."""


def visible(text: object) -> str:
    """``text`` with every control or invisible format character written as ``\\xNN`` or
    ``\\uNNNN``, so that nothing recorded can drive a terminal or reorder what is shown."""
    text = str(text)
    if text.isprintable():  # the common case, at C speed
        return text
    return "".join(_escaped(c) if unicodedata.category(c) in _HIDDEN else c for c in text)


def one_line(text: object) -> str:
    """``text`` as one line for a message: line breaks and tabs as spaces, then :func:`visible`."""
    return visible(_BREAKS.sub(" ", str(text)).strip())


def _escaped(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
