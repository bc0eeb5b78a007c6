"""The layout stays true: imports run one way between the rooms, no module imports itself back, and
only the framework adapters import a framework at module level (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each installed package's sources live (pyproject.toml's package-dir).
SOURCES = {"gradprobe": ROOT / "gradprobe", "gradprobe.cli": ROOT / "cli", "gradprobe.reports": ROOT / "reports"}

# The rooms, and the rooms each may import (besides itself). Top-level modules are the facade.
ROOMS = {
    "base": set(),
    "store": {"base"},
    "policies": {"base", "store"},
    "recording": {"base", "store", "policies"},
    "pytorch": {"base", "store", "policies", "recording"},
    "tensorflow": {"base", "store", "policies", "recording"},
    "analysis": {"base", "store", "policies"},
    "tuning": {"base", "store", "policies", "analysis"},
    "source_patch": {"base", "policies"},
    "export": {"base", "store"},
    "facade": {"base", "store", "policies", "recording", "pytorch", "tensorflow", "analysis"},
    "entry": {"cli"},
    "reports": {"base", "store", "policies", "recording", "analysis", "tuning"},
    "cli": {"base", "store", "policies", "recording", "analysis", "tuning", "source_patch", "export", "facade",
            "reports"},
}
BASE_MODULES = {"gradprobe.errors", "gradprobe._version", "gradprobe._lazy"}
FACADE_MODULES = {"gradprobe", "gradprobe.api", "gradprobe.tasks", "gradprobe.keras", "gradprobe.lightning",
                  "gradprobe.hf", "gradprobe.launcher"}
FRAMEWORKS = {"torch", "tensorflow", "keras", "lightning", "pytorch_lightning", "transformers", "accelerate"}
# Modules that exist to import a framework: the adapters and the opt-in callbacks.
FRAMEWORK_HOMES = ("gradprobe.pytorch", "gradprobe.tensorflow", "gradprobe.keras", "gradprobe.lightning",
                   "gradprobe.hf")
# Old import paths the README once promised, kept as aliases of the module that took their place.
ALIASES = {"gradprobe.policies.tf_apply": "gradprobe.tensorflow.clip"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for file in folder.rglob("*.py"):
            parts = file.relative_to(folder).with_suffix("").parts
            if package == "gradprobe" and parts[0] in ("cli", "reports"):
                continue
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((package, *parts))] = file
    return found


MODULES = _modules()


def _room(module: str) -> str:
    if module in BASE_MODULES:
        return "base"
    if module in FACADE_MODULES:
        return "facade"
    if module == "gradprobe.__main__":
        return "entry"
    return module.split(".")[1]


def _imports(module: str, file: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import statement in ``file``."""
    tree = ast.parse(file.read_text(encoding="utf-8"))
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:  # ``from pkg import module`` imports the module
                name = f"{base}.{alias.name}"
                found.append((name if name in MODULES else base, node.lineno, id(node) in top_level))
    return found


def _project_imports() -> dict[str, list[tuple[str, int, bool]]]:
    return {m: [(i, line, top) for i, line, top in _imports(m, f) if i.split(".")[0] == "gradprobe"]
            for m, f in MODULES.items()}


def test_rooms_import_only_the_rooms_below_them():
    wrong = []
    for module, imports in _project_imports().items():
        if module in ALIASES:
            continue
        room = _room(module)
        for imported, line, _ in imports:
            target = _room(imported) if imported in MODULES else None
            if target is None or (target != room and target not in ROOMS[room]):
                wrong.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {room} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = {m: {i for i, _, _ in imports if i in MODULES and i != m} for m, imports in _project_imports().items()}
    # A package's __init__ may import its own modules; a module importing its package back is a cycle.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, cycles


def test_frameworks_are_imported_at_module_level_only_by_their_adapters():
    wrong = []
    for module, file in MODULES.items():
        if module.startswith(FRAMEWORK_HOMES):
            continue
        for imported, line, top in _imports(module, file):
            if top and imported.split(".")[0] in FRAMEWORKS:
                wrong.append(f"{file.relative_to(ROOT)}:{line}: imports {imported}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_every_room_exists(room):
    assert any(_room(m) == room for m in MODULES), f"no module in room {room}"


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_aliases_only_re_export_their_new_home_and_nothing_imports_them(alias):
    tree = ast.parse(MODULES[alias].read_text(encoding="utf-8"))
    body = [node for node in tree.body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
    imports = [node for node in body if isinstance(node, ast.ImportFrom)]
    assert [node.module for node in imports] == [ALIASES[alias]]
    assert all(isinstance(node, (ast.ImportFrom, ast.Assign)) for node in body)
    users = [m for m, found in _project_imports().items() if any(i == alias for i, _, _ in found)]
    assert users == []
