"""Hostile input: names that try to be HTML, Markdown, rich markup or terminal control sequences are
shown literally in every format; reading runs and recommendation files never unpickles or executes
anything; a run name cannot place a run outside its root."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from plotly.offline import get_plotlyjs

import gradprobe
from gradprobe.reports.escape import visible
from gradprobe.store import RunWriter
from conftest import run_cli
from test_analysis_support import noisy, write_run

pytestmark = pytest.mark.hostile("hostile names and files")  # every case here is counted in the summary

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
    # The report's own scripts: its chart data (JSON, where < is written \u003c), Plotly's bundle and
    # the report's code; no recorded name may open another element or carry a control character.
    report_scripts = re.findall(r"<script[^>]*>", report)
    assert report_scripts == ['<script type="application/json" id="gp-data">', "<script>", "<script>"]
    for page, scripts in ((report, 3), (notebook, 0)):
        parser = _Tags()
        parser.feed(page)
        assert parser.tags.count("script") == scripts and "i" not in parser.tags and parser.handlers == []
        assert not CONTROL.search(page.replace(get_plotlyjs(), "").replace("\n", ""))
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


# -- crafted run directories and recommendation files -------------------------------------------


def _nested(depth: int) -> dict:
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def _crafted(meta: dict, case: str) -> dict:
    """``meta`` with one crafted field: what each case puts in run.json."""
    layers = [dict(layer) for layer in meta["layers"]]
    if case == "500-deep":
        return {**meta, "framework": _nested(500)}
    if case == "500-deep-in-a-layer":
        layers[0]["extra"] = _nested(500)
    elif case == "duplicate-names":
        layers[1]["name"] = layers[0]["name"]
    elif case == "optimizer-99":
        layers[1]["optimizer"] = 99
    return {**meta, "layers": layers}


CRAFTED = {"500-deep": "nested too deeply", "500-deep-in-a-layer": "nested too deeply",
           "duplicate-names": "layer name 'a' appears more than once",
           "optimizer-99": "layer 'b': optimizer 99 is not one of 'optimizers' (0)"}


def _small_run(root: Path) -> Path:
    layers = np.stack([noisy(30, 0.5, 0.1, s) for s in range(2)], axis=1)
    write_run(root, "run", noisy(30), layers, ["a", "b"])
    return root / "run"


def one_error_line(result, *parts: str) -> str:
    """The single stderr line of a usage or input error (exit 2), checked to contain ``parts``."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr)
    assert lines[0].startswith("gradprobe: error: ") and "internal error" not in lines[0], lines[0]
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


@pytest.mark.hostile("crafted run directory")
@pytest.mark.parametrize("case", sorted(CRAFTED))
@pytest.mark.parametrize("command", [["report"], ["report", "-f", "json"], ["recommend"]])
def test_a_crafted_run_json_is_one_line_naming_it(tmp_path, case, command):
    run_dir = _small_run(tmp_path)
    meta = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps(_crafted(meta, case)))
    result = run_cli(*command, str(run_dir), cwd=tmp_path)
    one_error_line(result, f"{run_dir / 'run.json'}: ", CRAFTED[case])


@pytest.mark.hostile("crafted run directory")
def test_a_run_directory_without_parts_is_an_error_not_an_empty_run(tmp_path):
    run_dir = _small_run(tmp_path)
    shutil.rmtree(run_dir / "parts")
    for command in (["report"], ["recommend"], ["export", "--csv", "csv"]):
        one_error_line(run_cli(*command, str(run_dir), cwd=tmp_path), f"{run_dir / 'parts'}: missing")


@pytest.mark.hostile("crafted run directory")
@pytest.mark.parametrize("content, problem", [
    ('{"recommendations": [{"spec": "global-norm:max=1", "n": ' + "9" * 5000 + "}]}",
     "an integer of 5000 digits"),
    ('{"recommendations": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ('{"recommendations": [{"spec": "global-norm:max=1", "x": ' + json.dumps(_nested(100)) + "}]}",
     "nested too deeply"),
])
def test_a_crafted_recommendation_file_is_one_line_naming_it(tmp_path, content, problem):
    (tmp_path / "rec.json").write_text(content)
    (tmp_path / "train.py").write_text("open('started', 'w')\n")
    for command in (["run", "--clip-from", "rec.json", "train.py"], ["apply", "--from", "rec.json", "train.py"]):
        one_error_line(run_cli(*command, cwd=tmp_path), "rec.json: ", problem)
    assert not (tmp_path / "started").exists()


# -- every read is bounded --------------------------------------------------------------------


def _make_special(path: Path, kind: str) -> None:
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)


@pytest.mark.hostile("unbounded read")
@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_run_json_that_is_a_fifo_or_a_device_is_refused_at_once(tmp_path, kind):
    run_dir = _small_run(tmp_path)
    _make_special(run_dir / "run.json", kind)
    started = time.monotonic()
    result = run_cli("report", str(run_dir), cwd=tmp_path, timeout=60)
    one_error_line(result, f"{run_dir / 'run.json'}: not a regular file")
    assert time.monotonic() - started < 30
    assert run_cli("ls", str(tmp_path), cwd=tmp_path, timeout=60).returncode == 0  # the listing skips it


@pytest.mark.hostile("unbounded read")
@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_recommendation_file_that_is_a_fifo_or_a_device_is_refused_at_once(tmp_path, kind):
    _make_special(tmp_path / "rec.json", kind)
    (tmp_path / "train.py").write_text("open('started', 'w')\n")
    result = run_cli("run", "--clip-from", "rec.json", "train.py", cwd=tmp_path, timeout=60)
    one_error_line(result, "rec.json: not a regular file")
    assert not (tmp_path / "started").exists()


@pytest.mark.hostile("unbounded read")
def test_files_over_the_size_limits_are_refused_before_parsing(tmp_path):
    from gradprobe.store.reader import MAX_META_BYTES
    from gradprobe.store.recommendation_file import MAX_RECOMMENDATION_BYTES

    run_dir = _small_run(tmp_path)
    meta = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**meta, "error": "E" * MAX_META_BYTES}))
    one_error_line(run_cli("report", str(run_dir), cwd=tmp_path), f"run.json: larger than {MAX_META_BYTES >> 20} MiB")
    (tmp_path / "rec.json").write_text(json.dumps({"recommendations": [{"spec": "x" * MAX_RECOMMENDATION_BYTES}]}))
    (tmp_path / "train.py").write_text("pass\n")
    one_error_line(run_cli("run", "--clip-from", "rec.json", "train.py", cwd=tmp_path), "rec.json: larger than")


@pytest.mark.hostile("unbounded read")
def test_a_huge_error_message_is_cut_and_the_report_stays_fast(tmp_path):
    from gradprobe.store.json_file import MAX_TEXT

    run_dir = _small_run(tmp_path)
    meta = json.loads((run_dir / "run.json").read_text())
    error = "ValueError: " + "boom " * 8_000_000  # 40 MB, under the file size limit
    (run_dir / "run.json").write_text(json.dumps({**meta, "status": "crashed", "error": error}))
    started = time.monotonic()
    result = run_cli("report", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0 and time.monotonic() - started < 60, result.stderr
    assert len(result.stdout) < 100_000 and f"{len(error) - MAX_TEXT} more characters" in result.stdout
    stored = gradprobe.load_run(run_dir).meta["error"]
    assert stored == f"{error[:MAX_TEXT]}... ({len(error) - MAX_TEXT} more characters)"
    # and the writer never stores more than the reader keeps
    (tmp_path / "fresh").mkdir()
    RunWriter(tmp_path / "fresh", {"status": "running"}).update(error=error)
    assert json.loads((tmp_path / "fresh" / "run.json").read_text())["error"] == stored


# -- invisible characters -------------------------------------------------------------------------

BIDI = "fc.\u202egnp.exe\u202c\u2066x\u2069\u200b\ufeff.weight"
INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff\x00-\x08\x0b-\x1f\x7f-\x9f]")


@pytest.mark.hostile("invisible characters")
def test_bidi_and_zero_width_characters_are_shown_as_escapes_in_every_format(tmp_path):
    layers = np.stack([noisy(30, 0.5, 0.1, s) for s in range(2)], axis=1)
    write_run(tmp_path, "run", noisy(30), layers, [BIDI, "ok.bias"])
    run_dir = tmp_path / "run"
    expected = "fc.\\u202egnp.exe\\u202c\\u2066x\\u2069\\u200b\\ufeff.weight"
    for fmt in ("terminal", "markdown", "html"):
        out = tmp_path / f"report.{fmt}"
        result = run_cli("report", str(run_dir), "-f", fmt, "-o", str(out), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        text = out.read_text(encoding="utf-8").replace(get_plotlyjs(), "")  # the bundle is not ours to check
        assert not INVISIBLE.search(text.replace("\n", "")), fmt
        shown_name = expected.replace("\\", "\\\\") if fmt == "markdown" else expected
        assert (shown_name[:40] if fmt == "terminal" else shown_name) in text, fmt  # the table cuts long names
    document = json.loads(run_cli("report", str(run_dir), "-f", "json", cwd=tmp_path).stdout)
    assert document["run"]["layers"][0]["name"] == BIDI  # data stays exact


@pytest.mark.hostile("invisible characters")
@pytest.mark.parametrize("args", [["profile", "\x1b[2J\u202emissing.py"], ["report", "\x1b]0;x\x07\u2066run"],
                                  ["profile", "--\x1b[31mbad", "train.py"]], ids=["script", "run", "option"])
def test_error_messages_never_echo_control_or_bidi_characters(tmp_path, args):
    line = one_error_line(run_cli(*args, cwd=tmp_path))
    assert not INVISIBLE.search(line) and "\\x1b" in line


# -- output files -----------------------------------------------------------------------------------


@pytest.mark.hostile("output files")
@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_writing_a_report_replaces_the_file_and_leaves_other_names_alone(tmp_path, link):
    run_dir = _small_run(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    target = run_dir / "report.html" if link == "hard" else tmp_path / "out.html"
    (os.link if link == "hard" else os.symlink)(victim, target)
    args = ["-f", "html"] if link == "hard" else ["-f", "markdown", "-o", str(target)]
    result = run_cli("report", str(run_dir), *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "keep me"
    assert not target.is_symlink() and target.stat().st_ino != victim.stat().st_ino
    assert "gradprobe report" in target.read_text(encoding="utf-8")
    assert sorted(p.name for p in target.parent.iterdir() if p.name.endswith(".tmp")) == []


# -- the spec grammar is ASCII ----------------------------------------------------------------------


@pytest.mark.hostile("spec grammar")
@pytest.mark.parametrize("value", ["\uff11", "\u0661", "1_000", "\uff10.5", "0.\u0665", "1e\uff13", "\u00b9"])
def test_numbers_in_specs_take_ascii_digits_only(tmp_path, value):
    from gradprobe.errors import GradprobeError
    from gradprobe.policies import parse_spec

    with pytest.raises(GradprobeError, match="is not a number"):
        parse_spec(f"global-norm:max={value}")
    assert float("1e3") == parse_spec("global-norm:max=1e+3").max  # the ASCII forms still parse
    (tmp_path / "train.py").write_text("open('started', 'w')\n")
    one_error_line(run_cli("run", "--clip", f"global-norm:max={value}", "train.py", cwd=tmp_path),
                   "global-norm: max=", "is not a number")
    assert not (tmp_path / "started").exists()


@pytest.mark.hostile("unbounded read")
@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
@pytest.mark.parametrize("command", [["profile"], ["apply", "--clip", "global-norm:max=1"]], ids=["profile", "apply"])
def test_a_script_that_is_a_fifo_or_a_device_is_refused_at_once(tmp_path, kind, command):
    _make_special(tmp_path / "train.py", kind)
    result = run_cli(*command, "train.py", cwd=tmp_path, timeout=60)
    one_error_line(result, "train.py", "not a regular file")
    assert not (tmp_path / "gradprobe-runs").exists()


@pytest.mark.hostile("invisible characters")
def test_paths_in_progress_messages_are_escaped_too(tmp_path):
    (tmp_path / "ok.py").write_text("print('ran')\n")
    profiled = run_cli("profile", "-q", "--out", "runs\x1b[31m\u202e", "ok.py", cwd=tmp_path)
    run_dir = next((tmp_path / "runs\x1b[31m\u202e").iterdir())
    written = run_cli("report", str(run_dir), "-f", "markdown", "-o", "report\u2066.md", cwd=tmp_path)
    for result in (profiled, written):
        assert result.returncode == 0 and result.stderr.strip(), result.stderr
        assert not INVISIBLE.search(result.stderr.replace("\n", "")) and "\\u" in result.stderr
    assert profiled.stdout == "ran\n" and (tmp_path / "report\u2066.md").is_file()
