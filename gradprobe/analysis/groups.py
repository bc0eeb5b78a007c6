"""Layer groups: the recorded top-level modules, or user groups ``NAME=GLOB`` matched on layer names."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Sequence

from gradprobe.errors import GradprobeError

MAX_NAMES_SHOWN = 5


def parse_groups(specs: Sequence[str]) -> dict[str, list[str]]:
    """``["enc=encoder.*", "dec=decoder.*", "enc=embed*"]`` -> ``{"enc": [...], "dec": [...]}``.

    A name given twice collects both patterns.
    """
    groups: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, pattern = spec.partition("=")
        name, pattern = name.strip(), pattern.strip()
        if not sep or not name or not pattern:
            raise GradprobeError(f"invalid group {spec!r}: expected NAME=GLOB, for example 'text=text_encoder.*'")
        groups.setdefault(name, []).append(pattern)
    return groups


def check_groups(user: dict[str, list[str]], names: Sequence[str]) -> None:
    """Raise a one-line error when a user group matches none of ``names``."""
    for group, patterns in user.items():
        if not any(fnmatchcase(name, p) for name in names for p in patterns):
            shown = ", ".join(list(names)[:MAX_NAMES_SHOWN])
            raise GradprobeError(
                f"group {group!r} ({' '.join(patterns)}) matches no layer; layer names look like: {shown}"
            )


def assign_groups(names: Sequence[str], recorded: Sequence[str],
                  user: dict[str, list[str]] | None = None) -> list[str | None]:
    """The group of each layer: its ``recorded`` group, or with ``user`` groups the first whose
    pattern matches the layer name (``None`` when none does)."""
    if not user:
        return [str(group) for group in recorded]
    return [next((g for g, patterns in user.items() if any(fnmatchcase(name, p) for p in patterns)), None)
            for name in names]
