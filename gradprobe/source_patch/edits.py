"""Planned changes to a parsed script, applied in one pass so untouched code keeps its exact text."""

from __future__ import annotations

from typing import Sequence

import libcst as cst


class Edits:
    """Statement insertions and removals, and node replacements, keyed by the original nodes.

    A replacement is built from the original node, so it must not contain
    other planned edits.
    """

    def __init__(self) -> None:
        self.replacements: dict[cst.CSTNode, cst.CSTNode] = {}
        self.before: dict[cst.BaseStatement, list[cst.BaseStatement]] = {}
        self.after: dict[cst.BaseStatement, list[cst.BaseStatement]] = {}
        self.removed: set[cst.BaseStatement] = set()
        self.leading: dict[cst.BaseStatement, Sequence[cst.EmptyLine]] = {}
        self.module_tail: list[cst.BaseStatement] = []

    def replace(self, original: cst.CSTNode, new: cst.CSTNode) -> None:
        """Put ``new`` where ``original`` is."""
        self.replacements[original] = new

    def add_before(self, statement: cst.BaseStatement, *new: cst.BaseStatement) -> None:
        """Insert statements before ``statement``, in the same block."""
        self.before.setdefault(statement, []).extend(new)

    def add_after(self, statement: cst.BaseStatement, *new: cst.BaseStatement) -> None:
        """Insert statements after ``statement``, in the same block."""
        self.after.setdefault(statement, []).extend(new)

    def remove(self, statement: cst.BaseStatement) -> None:
        """Delete ``statement`` (its comment lines go with it)."""
        self.removed.add(statement)

    def set_leading_lines(self, statement: cst.BaseStatement, lines: Sequence[cst.EmptyLine]) -> None:
        """Replace the blank and comment lines above ``statement``."""
        self.leading[statement] = lines

    def append_to_module(self, statement: cst.BaseStatement) -> None:
        """Add a statement at the end of an empty module."""
        self.module_tail.append(statement)

    def touches(self, node: cst.CSTNode, ancestors: Sequence[cst.CSTNode]) -> bool:
        """Whether ``node`` (with its ``ancestors``) is removed or replaced by these edits."""
        return any(n in self.replacements or n in self.removed for n in (node, *ancestors))

    def apply(self, module: cst.Module) -> cst.Module:
        """The edited module."""
        return module.visit(_Applier(self))


class _Applier(cst.CSTTransformer):
    def __init__(self, edits: Edits):
        super().__init__()
        self.edits = edits

    def on_leave(self, original_node, updated_node):
        updated_node = self.edits.replacements.get(original_node, updated_node)
        if isinstance(updated_node, (cst.IndentedBlock, cst.Module)):
            body = self._body(original_node.body, updated_node.body)
            if isinstance(updated_node, cst.Module):
                body += self.edits.module_tail
            updated_node = updated_node.with_changes(body=body)
        return updated_node

    def _body(self, original: Sequence[cst.BaseStatement], updated: Sequence[cst.BaseStatement]):
        edits = self.edits
        body: list[cst.BaseStatement] = []
        for old, new in zip(original, updated):
            body += edits.before.get(old, [])
            if old not in edits.removed:
                if old in edits.leading:
                    new = new.with_changes(leading_lines=edits.leading[old])
                body.append(new)
            body += edits.after.get(old, [])
        return body
