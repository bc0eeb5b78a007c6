"""Reading the JSON files of a run directory (``run.json``, ``recommendation.json``) within bounds.

The files may come from anywhere (a copied run directory, a downloaded
recommendation), so every read is bounded: only a regular file is opened (a
FIFO or a device such as ``/dev/zero`` is refused before anything is read),
its size has a ceiling, nesting is at most :data:`MAX_DEPTH` levels, an integer
has at most :data:`MAX_DIGITS` digits, and a string longer than
:data:`MAX_TEXT` characters is cut, so nothing read can exhaust memory, hang,
or make a renderer work for minutes.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from gradprobe.errors import GradprobeError

MAX_DEPTH = 32  # run.json nests 4 levels (layers -> layer -> shape); 32 leaves room for any future field
MAX_DIGITS = 20  # 2**64 has 20 digits: no count, id, time or exit code in a run file is longer
MAX_TEXT = 10_000  # characters kept of one string: a layer name, a script path, a one-line error
MiB = 1 << 20


class JSONFileError(ValueError):
    """The file is not a regular file, is too large, or is not JSON within the bounds."""


def read_json_file(file: Path, max_bytes: int) -> Any:
    """The JSON document in ``file`` (at most ``max_bytes`` bytes), strings cut to :data:`MAX_TEXT`.

    Raises ``FileNotFoundError`` when there is no such file and :class:`JSONFileError`, with a
    message that does not name the file, for everything else that is wrong with it.
    """
    text = _read_text(Path(file), max_bytes)
    try:
        document = json.loads(text, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise JSONFileError(f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise JSONFileError(f"not valid JSON (nested too deeply: at most {MAX_DEPTH} levels)") from None
    except ValueError as exc:
        raise JSONFileError(f"not valid JSON ({exc})") from None
    return _bounded(document)


def _read_text(file: Path, max_bytes: int) -> str:
    try:
        if not stat.S_ISREG(os.stat(file).st_mode):  # before opening: a FIFO's open would block
            raise JSONFileError("not a regular file")
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise JSONFileError(f"cannot be read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between the check and the open
            raise JSONFileError("not a regular file")
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise JSONFileError(f"cannot be read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        limit = f"{max_bytes // MiB} MiB" if max_bytes >= MiB else f"{max_bytes} bytes"
        raise JSONFileError(f"larger than {limit}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONFileError(f"cannot be read (not UTF-8: {exc.reason} at byte {exc.start})") from None


def cut_text(text: str) -> str:
    """``text``, or its first :data:`MAX_TEXT` characters and how many more there were."""
    return text if len(text) <= MAX_TEXT else f"{text[:MAX_TEXT]}... ({len(text) - MAX_TEXT} more characters)"


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_DIGITS:
        raise ValueError(f"an integer of {len(digits.lstrip('-'))} digits; at most {MAX_DIGITS} are read")
    return int(digits)


def _bounded(document: Any) -> Any:
    """``document`` with long strings cut, after checking its depth (iteratively: no recursion)."""
    root = [document]
    pending = [(root, 0, 0)]
    while pending:
        container, key, depth = pending.pop()
        value = container[key]
        if isinstance(value, str):
            container[key] = cut_text(value)
        elif isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise JSONFileError(f"nested too deeply (at most {MAX_DEPTH} levels)")
            keys = value.keys() if isinstance(value, dict) else range(len(value))
            pending.extend((value, k, depth + 1) for k in keys)
    return root[0]


def read_user_json(file: Path, max_bytes: int, label: str, missing: str) -> Any:
    """The JSON document a user points gradprobe at; ``GradprobeError`` ``"LABEL: MISSING"`` when there
    is no such file and ``"LABEL: <problem>"`` when it cannot be read."""
    try:
        return read_json_file(file, max_bytes)
    except FileNotFoundError:
        raise GradprobeError(f"{label}: {missing}") from None
    except JSONFileError as exc:
        raise GradprobeError(f"{label}: {exc}") from None
