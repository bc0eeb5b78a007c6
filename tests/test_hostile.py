"""Hostile input: names that try to be HTML, Markdown, rich markup or terminal control sequences are
shown literally in every format; reading runs and recommendation files never unpickles or executes
anything; a run name cannot place a run outside its root."""

from __future__ import annotations

import json
import os
import pickle
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import gradprobe
from gradprobe.reports.escape import visible
from conftest import run_cli
from test_analysis_support import noisy, write_run

NAMES = [
    "enc.\x1b[31mred\x1b[0m.weight",
    "enc.[bold red]markup[/].bias",
    "dec.<script>alert(1)</script>",
    "dec.<img src=x onerror=alert(2)>",
    "head.`code`|*star*_[link](http://x)\n# heading",
    "head.\x07bell\rreturn\x9bcsi",
]
SCRIPT = "/tmp/\x1b]0;pwned\x07<b>bold</b>[red]x[/red].py"
ERROR = "ValueError: \x1b[2J<script>x</script> | *boom*"
RUN_NAME = "run-\x1b[1m<i>[blue]"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@pytest.fixture
def hostile(tmp_path) -> Path:
    """A run whose layer, group, script, argument and error texts are all hostile, one of its
    layers dead and one exploding, so that findings name them too."""
    n = 120
    layers = np.stack([noisy(n, 0.5, 0.05, s) for s in range(len(NAMES))], axis=1)
    layers[:, 1] = np.nan
    layers[80:, 2] *= 1.2 ** np.arange(1, 41)
    norms = np.sqrt(np.nansum(layers ** 2, axis=1))
    writer = write_run(tmp_path / "runs", RUN_NAME, norms, layers, NAMES, groups=NAMES, every=1,
                       loss=np.linspace(2, 1, n))
    writer.update(script=SCRIPT, argv=[SCRIPT, "--tag", "<b>\x1b[5m"], error=ERROR, status="crashed")
    return tmp_path / "runs" / RUN_NAME


def shown(text: str) -> str:
    """How a hostile text must appear once escaped: control characters visible."""
    return visible(text)


def test_terminal_report_list_and_compare_show_names_literally(hostile, tmp_path):
    outputs = [run_cli("report", str(hostile), cwd=tmp_path), run_cli("ls", str(hostile.parent), cwd=tmp_path),
               run_cli("compare", str(hostile), str(hostile), cwd=tmp_path)]
    for result in outputs:
        assert result.returncode == 0, result.stderr
        assert not CONTROL.search(result.stdout.replace("\n", "")), repr(result.stdout)
    report = outputs[0].stdout
    assert shown(SCRIPT) in report and shown(ERROR) in report
    assert "[bold red]markup[/].bias" in report  # markup shown, not applied
    assert shown(RUN_NAME) in outputs[1].stdout and shown(Path(SCRIPT).name) in outputs[1].stdout


def test_markdown_shows_names_as_text(hostile, tmp_path):
    text = run_cli("report", str(hostile), "-f", "markdown", cwd=tmp_path).stdout
    compare = run_cli("compare", str(hostile), str(hostile), "-f", "markdown", cwd=tmp_path).stdout
    for doc in (text, compare):
        assert not CONTROL.search(doc.replace("\n", ""))
        assert "<script" not in doc and "<img" not in doc and "<b>" not in doc and "<i>" not in doc
        assert "\n# heading" not in doc  # a line break in a name starts no heading
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert r"head.\`code\`\|\*star\*\_\[link\](http://x) # heading" in text


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.handlers: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.handlers += [name for name, _ in attrs if name.startswith("on")]

    def handle_data(self, data):
        self.text.append(data)


def test_html_report_and_notebook_view_escape_every_name(hostile, tmp_path):
    out = tmp_path / "report.html"
    assert run_cli("report", str(hostile), "-f", "html", "-o", str(out), cwd=tmp_path).returncode == 0
    report, notebook = out.read_text(encoding="utf-8"), gradprobe.load_run(hostile)._repr_html_()
    for page in (report, notebook):
        parser = _Tags()
        parser.feed(page)
        assert "script" not in parser.tags and "i" not in parser.tags and parser.handlers == []
        assert not CONTROL.search(page.replace("\n", ""))
        text = "".join(parser.text)
        assert shown(RUN_NAME) in text and shown(ERROR) in text
    text = "".join(_text(report))
    assert shown(SCRIPT) in text and "dec.<img src=x onerror=alert(2)>" in text  # names, as text


def _text(page: str) -> list[str]:
    parser = _Tags()
    parser.feed(page)
    return parser.text


def test_json_report_keeps_names_as_exact_data(hostile, tmp_path):
    result = run_cli("report", str(hostile), "-f", "json", cwd=tmp_path)
    assert not CONTROL.search(result.stdout.replace("\n", ""))  # JSON escapes control characters
    document = json.loads(result.stdout)
    assert [layer["name"] for layer in document["run"]["layers"]] == NAMES
    assert document["run"]["script"] == SCRIPT and document["run"]["error"] == ERROR
    named = {name for finding in document["findings"] for name in finding["layers"]}
    assert {NAMES[1], NAMES[2]} <= named


# -- nothing is unpickled or executed ----------------------------------------------------------


class _Trap:
    """Unpickling this object would create the file ``path``."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickles_in_a_run_directory_are_data_never_loaded(tmp_path):
    layers = np.stack([noisy(30, 0.5, 0.1, s) for s in range(2)], axis=1)
    write_run(tmp_path, "run", noisy(30), layers, ["a", "b"])
    run_dir, trap = tmp_path / "run", tmp_path / "trapped"
    payload = pickle.dumps(_Trap(trap))
    (run_dir / "parts" / "steps-r0-000002.parquet").write_bytes(payload)
    (run_dir / "recommendation.json").write_bytes(payload)
    (tmp_path / "train.py").write_text("print('ran')\n")
    report = run_cli("report", str(run_dir), "-f", "json", cwd=tmp_path)
    assert report.returncode == 0 and "skipping unreadable part" in report.stderr
    clip = run_cli("run", "--clip-from", str(run_dir), "train.py", cwd=tmp_path)
    assert clip.returncode == 2 and "recommendation.json: cannot be read" in clip.stderr
    (run_dir / "run.json").write_bytes(payload)
    assert run_cli("report", str(run_dir), cwd=tmp_path).returncode == 2
    assert not trap.exists() and clip.stdout == ""


def test_a_spec_that_looks_like_code_is_refused_not_run(tmp_path):
    trap = tmp_path / "trapped"
    spec = f"__import__('pathlib').Path({str(trap)!r}).touch()"
    (tmp_path / "recommendation.json").write_text(json.dumps({"recommendations": [{"spec": spec}]}))
    (tmp_path / "train.py").write_text("print('ran')\n")
    for args in (["--clip", spec], ["--clip-from", "recommendation.json"]):
        result = run_cli("run", *args, "train.py", cwd=tmp_path)
        assert result.returncode == 2 and "unknown clip policy" in result.stderr and result.stdout == ""
    assert not trap.exists()


# -- run names and paths -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", "../outside", "/tmp/absolute", "a/../../b", "ok/..", "-rf", "\x1b[31m"])
def test_run_names_that_leave_the_root_are_refused(tmp_path, name):
    (tmp_path / "train.py").write_text("print('ran')\n")
    result = run_cli("profile", "--out", "runs", "--name", name, "train.py", cwd=tmp_path)
    assert result.returncode == 2 and "invalid run name" in result.stderr and result.stdout == ""
    assert "\x1b" not in result.stderr
    assert {p.name for p in tmp_path.iterdir()} <= {"runs", "train.py"}
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("target_exists", [True, False], ids=["link", "dangling-link"])
def test_a_run_name_that_is_a_symlink_out_of_the_root_is_refused(tmp_path, target_exists):
    outside = tmp_path / "outside"
    if target_exists:
        outside.mkdir()
    (tmp_path / "runs").mkdir()
    os.symlink(outside, tmp_path / "runs" / "exp")
    (tmp_path / "train.py").write_text("print('ran')\n")
    result = run_cli("profile", "--out", "runs", "--name", "exp", "train.py", cwd=tmp_path)
    assert result.returncode == 2 and "already exists" in result.stderr and result.stdout == ""
    assert outside.exists() == target_exists and (not target_exists or not any(outside.iterdir()))


def test_a_report_html_symlink_in_a_run_directory_is_not_followed(tmp_path):
    layers = np.stack([noisy(30, 0.5, 0.1, s) for s in range(2)], axis=1)
    write_run(tmp_path, "run", noisy(30), layers, ["a", "b"])
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.symlink(victim, tmp_path / "run" / "report.html")
    result = run_cli("report", str(tmp_path / "run"), "-f", "html", cwd=tmp_path)
    assert result.returncode == 2 and "is a symbolic link" in result.stderr
    assert victim.read_text() == "keep me"
