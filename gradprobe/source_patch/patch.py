"""Writing a clip policy into a training script's source, as a reviewable unified diff."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

from gradprobe.errors import GradprobeError
from gradprobe.policies import Policy, as_policy
from gradprobe.source_patch.edits import Edits
from gradprobe.source_patch.imports import Imports
from gradprobe.source_patch.keras_optimizers import KerasOptimizers
from gradprobe.source_patch.refusal import PatchRefused, Problem
from gradprobe.source_patch.syntax import Script
from gradprobe.source_patch.torch_loop import TorchLoop


@dataclass(frozen=True)
class SourcePatch:
    """A script's text before and after the clip policy was written into it."""

    filename: str
    spec: str
    before: str
    after: str
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether the patch changes anything."""
        return self.before != self.after

    def diff(self) -> str:
        """The change as a unified diff (empty when nothing changes)."""
        lines = difflib.unified_diff(self.before.splitlines(keepends=True), self.after.splitlines(keepends=True),
                                     self.filename, self.filename)
        return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)


def patch_source(source: str, spec: str | Policy, filename: str = "<script>") -> SourcePatch:
    """Write the clip policy ``spec`` into the training script ``source``.

    PyTorch: the clip goes before every optimizer step (see
    :mod:`gradprobe.source_patch.torch_loop`); Keras: the optimizers get the
    matching constructor setting (see :mod:`gradprobe.source_patch.keras_optimizers`).
    Raises :class:`PatchRefused` (every problem with its line) when a step
    cannot be clipped safely, and changes nothing then.
    """
    policy = as_policy(spec)
    script = Script(source, filename)
    imports = Imports(script.module)
    edits = Edits()
    problems: list[Problem] = []
    torch_loop = TorchLoop(script, imports, edits, problems)
    keras = KerasOptimizers(script, imports, edits, problems)
    if torch_loop.steps:
        torch_loop.plan(policy)
    if keras.found:
        keras.plan(policy)
    if not problems and not torch_loop.steps and not keras.found:
        raise GradprobeError(_nothing_found(filename, torch_loop))
    if problems:
        raise PatchRefused(filename, problems)
    after = edits.apply(script.module).code
    return SourcePatch(filename, str(policy), source, after, torch_loop.notes)


def _nothing_found(filename: str, torch_loop: TorchLoop) -> str:
    if torch_loop.optimizers:
        name, builds = next(iter(torch_loop.optimizers.items()))
        return (f"{filename}:{torch_loop.script.line(builds[0].call)}: `{name}` is built but never stepped: "
                f"expected `{name}.step()` or `scaler.step({name})` (nothing was changed)")
    hints = "; ".join(torch_loop.unknown_steps()[:3])
    return (f"{filename}: no optimizer found: expected a PyTorch optimizer built with torch.optim.NAME(...) and "
            "stepped with OPT.step() or scaler.step(OPT), or a Keras optimizer built with keras.optimizers.NAME(...) "
            "or named in model.compile(optimizer=...)" + (f"; {hints}" if hints else "") + " (nothing was changed)")


def patch_file(path: str | os.PathLike, spec: str | Policy) -> SourcePatch:
    """:func:`patch_source` on the file at ``path`` (not written; see :func:`write_patch`)."""
    file = Path(path)
    if file.exists() and not file.is_file():  # a FIFO or a device: nothing to patch, and opening may block
        raise GradprobeError(f"{path}: not a regular file")
    try:
        with open(file, encoding="utf-8", newline="") as handle:
            source = handle.read()
    except FileNotFoundError:
        raise GradprobeError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GradprobeError(f"{path}: cannot be read ({exc})") from None
    return patch_source(source, spec, str(path))


def write_patch(patch: SourcePatch, path: str | os.PathLike) -> None:
    """Write the patched text to ``path``, keeping its line endings."""
    try:
        with open(path, "w", encoding="utf-8", newline="") as handle:
            handle.write(patch.after)
    except OSError as exc:
        raise GradprobeError(f"{path}: cannot be written ({exc.strerror or exc})") from None
