"""The commands gradprobe suggests after a recommendation or a tune, written to be copied as they are."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Sequence


def script_command(script: str | os.PathLike, args: Sequence[str] = ()) -> str:
    """``SCRIPT [-- ARGS...]`` shell-quoted; a script under the working directory is shown relative to it."""
    shown = str(script)
    if os.path.isabs(shown) and Path(shown).is_relative_to(Path.cwd()):
        shown = os.path.relpath(shown)
    return shlex.join([shown, *(["--", *args] if args else [])])


def clip_commands(source: str | os.PathLike, script: str | os.PathLike, args: Sequence[str] = ()) -> list[str]:
    """``gradprobe run --clip-from SOURCE SCRIPT ...`` and ``gradprobe apply SCRIPT --from SOURCE``."""
    source = shlex.quote(str(source))
    return [f"gradprobe run --clip-from {source} {script_command(script, args)}",
            f"gradprobe apply {script_command(script)} --from {source}"]
