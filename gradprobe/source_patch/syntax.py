"""A parsed script with the metadata the patchers need: lines, parents, scopes and imported names."""

from __future__ import annotations

from typing import Iterator, TypeVar

import libcst as cst
from libcst.metadata import MetadataWrapper, ParentNodeProvider, PositionProvider, QualifiedNameProvider, ScopeProvider

from gradprobe.errors import GradprobeError

N = TypeVar("N", bound=cst.CSTNode)


def dotted(node: cst.CSTNode | None) -> str | None:
    """``a.b.c`` for a chain of names and attributes, None for any other expression."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr.value}" if base else None
    return None


def number_code(value: float) -> str:
    """A float as Python source: ``1.0``, ``0.5``, ``1e-05``."""
    return repr(float(value))


class Script:
    """A module parsed with libcst, and questions about its nodes."""

    def __init__(self, source: str, filename: str):
        try:
            module = cst.parse_module(source)
        except cst.ParserSyntaxError as exc:
            raise GradprobeError(f"{filename}:{exc.editor_line}: not valid Python ({exc.message})") from None
        self.filename = filename
        self.wrapper = MetadataWrapper(module)
        self.module = self.wrapper.module
        self._positions = self.wrapper.resolve(PositionProvider)
        self._parents = self.wrapper.resolve(ParentNodeProvider)
        self._scopes = self.wrapper.resolve(ScopeProvider)
        self._names = self.wrapper.resolve(QualifiedNameProvider)

    def find(self, kind: type[N], within: cst.CSTNode | None = None) -> list[N]:
        """Every node of type ``kind`` in the module (or in ``within``), in source order."""
        found: list[N] = []

        class Collector(cst.CSTVisitor):
            def on_visit(self, node: cst.CSTNode) -> bool:
                if isinstance(node, kind):
                    found.append(node)
                return True

        (within or self.module).visit(Collector())
        return found

    def code(self, node: cst.CSTNode) -> str:
        """The source text of ``node``."""
        return self.module.code_for_node(node)

    def line(self, node: cst.CSTNode) -> int:
        """The 1-based line where ``node`` starts."""
        return self._positions[node].start.line

    def parent(self, node: cst.CSTNode) -> cst.CSTNode | None:
        """The node that contains ``node`` (None for the module)."""
        return self._parents.get(node)

    def ancestors(self, node: cst.CSTNode) -> Iterator[cst.CSTNode]:
        """The nodes containing ``node``, innermost first."""
        parent = self.parent(node)
        while parent is not None:
            yield parent
            parent = self.parent(parent)

    def enclosing(self, node: cst.CSTNode, kind: type[N]) -> N | None:
        """The innermost ancestor of type ``kind``, if any."""
        return next((a for a in self.ancestors(node) if isinstance(a, kind)), None)

    def qualified_names(self, node: cst.CSTNode) -> set[str]:
        """What ``node`` refers to through the script's imports, e.g. ``{"torch.optim.SGD"}``."""
        value = self._names.get(node, set())
        if callable(value):
            value = value()
        return {q.name for q in value}

    def same_binding(self, name: str, a: cst.CSTNode, b: cst.CSTNode) -> bool:
        """Whether ``name`` means the same variable at ``a`` and at ``b``."""
        scope_a, scope_b = self._scopes.get(a), self._scopes.get(b)
        if scope_a is None or scope_b is None:
            return False
        seen_a, seen_b = set(scope_a[name]), set(scope_b[name])
        return bool(seen_a) and seen_a == seen_b

    def function_of(self, node: cst.CSTNode) -> cst.CSTNode:
        """The innermost function around ``node``, or the module."""
        return self.enclosing(node, cst.FunctionDef) or self.module

    def statement_of(self, node: cst.CSTNode) -> tuple[cst.BaseSmallStatement | None, cst.CSTNode | None, str]:
        """The small statement holding ``node`` and the line statement around it, or why there is none.

        Returns ``(small, line, "")`` when ``node`` is the value of a simple
        statement on a line of its own (``x.step()``, ``y = x.step()``);
        ``(small, None, reason)`` when that statement shares its line;
        ``(None, None, reason)`` otherwise.
        """
        for ancestor in self.ancestors(node):
            if isinstance(ancestor, cst.Lambda):
                return None, None, "it is inside a lambda"
            if isinstance(ancestor, cst.BaseSmallStatement):
                value = getattr(ancestor, "value", None)
                if not isinstance(ancestor, (cst.Expr, cst.Assign, cst.AnnAssign)) or value is not node:
                    return None, None, "it is part of a larger expression"
                line = self.parent(ancestor)
                if not isinstance(line, cst.SimpleStatementLine) or len(line.body) != 1:
                    return ancestor, None, "it shares its line with other statements"
                return ancestor, line, ""
            if isinstance(ancestor, cst.BaseCompoundStatement):
                break
        return None, None, "it is part of a larger expression"
