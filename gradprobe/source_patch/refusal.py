"""Why a script cannot be patched: each problem names its line, and the whole patch is refused."""

from __future__ import annotations

from dataclasses import dataclass

from gradprobe.errors import GradprobeError


@dataclass(frozen=True)
class Problem:
    """One reason a script cannot be patched safely, at ``line`` (1-based)."""

    line: int
    message: str


class PatchRefused(GradprobeError):
    """The script was left unchanged; ``problems`` say where and why."""

    def __init__(self, filename: str, problems: list[Problem]):
        self.filename = filename
        self.problems = sorted(problems, key=lambda p: p.line)
        super().__init__("; ".join(f"{filename}:{p.line}: {p.message}" for p in self.problems)
                         + " (nothing was changed)")
