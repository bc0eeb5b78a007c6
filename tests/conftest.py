"""Shared fixtures: running the CLI in a subprocess and writing small training scripts; importing an
optional framework (:func:`require`)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def in_ci() -> bool:
    """Whether the tests run in CI (``CI=true``, as CI services and ``.ci/run`` set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require(module: str, reason: str | None = None):
    """Import and return ``module``, skipping the calling test (or test module) when it is missing, as
    ``pytest.importorskip`` does; in CI, where every framework is installed, a module that cannot be
    imported fails the run instead, so that a broken install never turns into silent skips."""
    if not in_ci():
        return pytest.importorskip(module, reason=reason)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"{module} cannot be imported in CI ({type(exc).__name__}: {exc})", pytrace=False)


def run_cli(*args: str, cwd: Path, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m gradprobe ARGS`` in ``cwd`` and capture its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gradprobe", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env,
    )


@pytest.fixture
def write_script(tmp_path: Path):
    """Write a dedented Python script into ``tmp_path`` and return its path."""

    def write(source: str, name: str = "train.py") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return path

    return write
