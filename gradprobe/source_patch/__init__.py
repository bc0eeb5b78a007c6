"""Writing a clip policy into a training script's source (``gradprobe apply``).

``patch_file("train.py", "global-norm:max=1.0")`` returns a :class:`SourcePatch`
whose ``diff()`` is a unified diff; :func:`write_patch` writes it. The script is
edited as a concrete syntax tree (libcst), so everything the patch does not
touch keeps its exact text, comments included; applying the same policy twice
changes nothing the second time. A script whose steps cannot be clipped safely
raises :class:`PatchRefused`, naming each line and why.
"""

from gradprobe.source_patch.patch import SourcePatch, patch_file, patch_source, write_patch
from gradprobe.source_patch.refusal import PatchRefused, Problem

__all__ = ["PatchRefused", "Problem", "SourcePatch", "patch_file", "patch_source", "write_patch"]
