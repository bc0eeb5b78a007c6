"""Sample indices as compact text: ``4480-4543`` or ``3,17,40-47`` (the ``samples`` column of ``batches``)."""

from __future__ import annotations

from typing import Iterable

from gradprobe.errors import GradprobeError


def format_ranges(indices: Iterable[int]) -> str:
    """Sorted, de-duplicated ``indices`` as comma-separated runs ``a-b`` (single values alone)."""
    values = sorted(set(int(i) for i in indices))
    parts: list[str] = []
    start = previous = None
    for value in values:
        if previous is not None and value == previous + 1:
            previous = value
            continue
        if start is not None:
            parts.append(_run(start, previous))
        start = previous = value
    if start is not None:
        parts.append(_run(start, previous))
    return ",".join(parts)


def _run(start: int, end: int) -> str:
    return str(start) if start == end else f"{start}-{end}"


def parse_ranges(text: str) -> list[int]:
    """The indices of a :func:`format_ranges` text, sorted; a malformed text is a one-line error."""
    indices: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise GradprobeError(f"bad sample range {part!r}: expected N or N-M (non-negative integers)") from None
        if first < 0 or last < first:
            raise GradprobeError(f"bad sample range {part!r}: expected N or N-M with 0 <= N <= M")
        indices.update(range(first, last + 1))
    return sorted(indices)
