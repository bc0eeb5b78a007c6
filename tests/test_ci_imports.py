"""In CI a framework that cannot be imported fails the run; elsewhere the tests that need it are skipped."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent

NEEDS = """
import sys
sys.path.insert(0, {tests!r})
from conftest import require

framework = require({module!r})


def test_uses_the_framework():
    assert framework.__name__ == {module!r}
"""


def _pytest(folder: Path, module: str, ci: str | None) -> subprocess.CompletedProcess:
    (folder / "test_needs.py").write_text(NEEDS.format(tests=str(TESTS_DIR), module=module))
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_needs.py"],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("ci", [None, "false"])
def test_a_missing_framework_skips_its_tests_outside_ci(tmp_path, ci):
    result = _pytest(tmp_path, "gradprobe_no_such_framework", ci)
    assert result.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, result.stdout  # every test skipped
    assert "1 skipped" in result.stdout and "failed" not in result.stdout and "error" not in result.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_a_missing_framework_fails_the_run_in_ci(tmp_path, ci):
    result = _pytest(tmp_path, "gradprobe_no_such_framework", ci)
    assert result.returncode == pytest.ExitCode.INTERRUPTED, result.stdout  # a collection error
    assert "gradprobe_no_such_framework cannot be imported in CI (ModuleNotFoundError" in result.stdout
    assert "skipped" not in result.stdout


def test_an_installed_framework_runs_its_tests_in_ci(tmp_path):
    result = _pytest(tmp_path, "json", "true")
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout


def test_no_test_module_skips_a_missing_import_behind_the_ci_check():
    bare = []
    for file in sorted(TESTS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "importorskip" and file.name != "conftest.py":
                bare.append(f"{file.name}:{node.lineno}")
    assert bare == [], f"use conftest.require instead of pytest.importorskip: {bare}"
