"""What pip installs: the version the CLI reports and the extras' requirements."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO, run_cli

FRAMEWORK_EXTRAS = ("torch", "tensorflow", "lightning", "hf", "tensorboard", "wandb")
TENSORFLOW_BUILDS = {"tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-macos", "tensorflow-intel"}


def _installed(expression: str, cwd: Path):
    """Evaluate ``expression`` on ``importlib.metadata`` for the installed gradprobe, outside the source tree."""
    code = f"import importlib.metadata as m, json; print(json.dumps({expression}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _extras(tmp_path: Path) -> dict[str, set[str]]:
    """Requirement names per extra, with self-references (``gradprobe[a,b]``) expanded."""
    direct: dict[str, list[str]] = {}
    for requirement in _installed("m.requires('gradprobe')", tmp_path):
        marker = re.search(r"""extra\s*==\s*["']([\w-]+)["']""", requirement)
        if marker:
            direct.setdefault(marker.group(1), []).append(requirement.split(";")[0].strip())

    def names(extra: str) -> set[str]:
        found = set()
        for requirement in direct.get(extra, []):
            name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower()
            if name == "gradprobe":
                for inner in re.search(r"\[(.*)\]", requirement).group(1).split(","):
                    found |= names(inner.strip())
            else:
                found.add(name)
        return found

    return {extra: names(extra) for extra in direct}


def test_version_flag_prints_the_installed_version(tmp_path):
    version = _installed("m.version('gradprobe')", tmp_path)
    done = run_cli("--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"gradprobe {version}"


def test_extras_never_install_a_second_tensorflow_build_and_all_covers_every_extra(tmp_path):
    extras = _extras(tmp_path)
    assert set(FRAMEWORK_EXTRAS) | {"test", "all"} <= set(extras)
    assert not extras["tensorflow"] & TENSORFLOW_BUILDS, "a TensorFlow build in the extra would clash with another"
    assert "keras" in extras["tensorflow"]
    assert extras["all"] == set().union(*(extras[e] for e in FRAMEWORK_EXTRAS))


def test_test_extra_installs_every_package_the_optional_tests_need(tmp_path):
    needed = {"lightning", "transformers", "accelerate", "tensorboard", "wandb"}
    assert needed <= _extras(tmp_path)["test"]


def test_wheel_ships_every_module_under_gradprobe_and_the_py_typed_marker(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("gradprobe", "cli", "reports"):
        shutil.copytree(REPO / folder, source / folder, ignore=ignore)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=240)
    (wheel,) = (tmp_path / "dist").glob("gradprobe-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    installed_as = {"gradprobe": "gradprobe", "cli": "gradprobe/cli", "reports": "gradprobe/reports"}
    expected = {f"{installed_as[folder]}/{path.relative_to(source / folder).as_posix()}"
                for folder in installed_as for path in (source / folder).rglob("*.py")}
    assert not expected - shipped, f"modules missing from the wheel: {sorted(expected - shipped)}"
    assert "gradprobe/py.typed" in shipped
    assert not any(name.startswith(("cli/", "reports/")) for name in shipped)  # no top-level `cli` package


def test_shell_completion_script_and_completions(tmp_path):
    script = run_cli("--show-completion", "bash", cwd=tmp_path)
    assert script.returncode == 0, script.stderr
    assert "_GRADPROBE_COMPLETE=complete_bash" in script.stdout
    for words, cword, expected in (("gradprobe exp", 1, "export"), ("gradprobe export --tensor", 2, "--tensorboard")):
        done = run_cli(cwd=tmp_path, env={"_GRADPROBE_COMPLETE": "complete_bash", "COMP_WORDS": words,
                                          "COMP_CWORD": str(cword)})
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [expected]
