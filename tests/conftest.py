"""Shared fixtures: running the CLI in a subprocess and writing small training scripts; importing an
optional framework (:func:`require`); the tally of the fault and hostile-input suite (tests marked
``hostile(category)``), printed at the end of the run."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from collections import Counter
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


# -- the fault and hostile-input suite: cases tried and handled right, per category -----------------

_TRIED: Counter = Counter()
_RIGHT: Counter = Counter()


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("hostile")
    if marker is not None:  # carried in the report, so that it also reaches a distributing controller
        item.user_properties.append(("hostile", marker.args[0]))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    category = dict(report.user_properties).get("hostile")
    if category is None or report.when == "teardown" or (report.when == "setup" and report.passed):
        return
    _TRIED[category] += 1  # a skip or a setup error counts as tried and not right
    _RIGHT[category] += report.when == "call" and report.passed


def pytest_terminal_summary(terminalreporter) -> None:
    if not _TRIED:
        return
    terminalreporter.section("fault and hostile-input suite")
    width = max(map(len, _TRIED))
    for category in sorted(_TRIED):
        terminalreporter.write_line(f"{category:<{width}}  {_RIGHT[category]:>4} right of {_TRIED[category]:>4} tried")
    terminalreporter.write_line(f"{'all':<{width}}  {sum(_RIGHT.values()):>4} right of {sum(_TRIED.values()):>4} tried")
