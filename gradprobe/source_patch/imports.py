"""The script's top-level imports: how to spell a module in it, and where to add an import."""

from __future__ import annotations

import libcst as cst

from gradprobe.source_patch.edits import Edits


def _module_name(node: cst.BaseExpression) -> str:
    return cst.Module([]).code_for_node(node)


class Imports:
    """The names a script binds to modules at its top level, e.g. ``{"nn": "torch.nn"}``."""

    def __init__(self, module: cst.Module):
        self.module = module
        self.bindings: dict[str, str] = {}
        self.statements: dict[str, cst.SimpleStatementLine] = {}
        self._last_leading_import: cst.SimpleStatementLine | None = None
        self._added: list[str] = []
        leading = True
        for index, statement in enumerate(module.body):
            imports = self._imports_of(statement)
            if imports is None:
                docstring = index == 0 and _is_docstring(statement)
                leading = leading and docstring
                continue
            for local, target in imports:
                self.bindings.setdefault(local, target)
                self.statements.setdefault(local, statement)
            if leading:
                self._last_leading_import = statement

    @staticmethod
    def _imports_of(statement: cst.BaseStatement) -> list[tuple[str, str]] | None:
        if not isinstance(statement, cst.SimpleStatementLine):
            return None
        found: list[tuple[str, str]] = []
        for small in statement.body:
            if isinstance(small, cst.Import):
                for alias in small.names:
                    name = _module_name(alias.name)
                    if alias.asname is not None:
                        found.append((_module_name(alias.asname.name), name))
                    else:
                        top = name.split(".")[0]
                        found.append((top, top))
            elif isinstance(small, cst.ImportFrom) and not small.relative and small.module is not None \
                    and not isinstance(small.names, cst.ImportStar):
                base = _module_name(small.module)
                for alias in small.names:
                    name = _module_name(alias.name)
                    local = _module_name(alias.asname.name) if alias.asname is not None else name
                    found.append((local, f"{base}.{name}"))
            else:
                return None
        return found

    def reference(self, target: str) -> str | None:
        """How the script spells module ``target`` (``torch.nn.utils`` -> ``nn.utils``), or None."""
        top = target.split(".")[0]
        if self.bindings.get(top) == top:
            return target
        best: tuple[int, str] | None = None
        for local, bound in self.bindings.items():
            if target == bound or target.startswith(bound + "."):
                spelled = local + target[len(bound):]
                if best is None or len(bound) > best[0]:
                    best = (len(bound), spelled)
        return best[1] if best else None

    def require(self, target: str, edits: Edits, statement: str | None = None) -> str:
        """The spelling of ``target``, adding ``statement`` (default ``import TOP``) when it is not imported."""
        spelled = self.reference(target)
        if spelled is not None:
            return spelled
        statement = statement or f"import {target.split('.')[0]}"
        if statement not in self._added:
            self._added.append(statement)
            self._add(cst.parse_statement(statement), edits)
        for local, bound in self._imports_of(cst.parse_statement(statement)) or []:
            self.bindings.setdefault(local, bound)
        return self.reference(target) or target

    def _add(self, statement: cst.BaseStatement, edits: Edits) -> None:
        if self._last_leading_import is not None:
            edits.add_after(self._last_leading_import, statement)
        elif self.module.body and _is_docstring(self.module.body[0]):
            edits.add_after(self.module.body[0], statement)
        elif self.module.body:
            edits.add_before(self.module.body[0], statement)
        else:
            edits.append_to_module(statement)


def _is_docstring(statement: cst.BaseStatement) -> bool:
    return (isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1
            and isinstance(statement.body[0], cst.Expr) and isinstance(statement.body[0].value, cst.SimpleString))
