"""Bad input: whatever is in a run directory or a recommendation file, reading it either works or
fails with one line naming the file and what is wrong; the CLI exits non-zero without a traceback
unless ``--debug`` asks for one."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

import gradprobe
from gradprobe.errors import GradprobeError, RunFormatError
from gradprobe.store.recommendation_file import load_recommended_spec
from gradprobe.reports.json_report import render_json
from gradprobe.reports.markdown import render_markdown
from gradprobe.reports.summary import build_report
from gradprobe.reports.terminal import render_report, render_run_list
from gradprobe.store.reader import FIELD_TYPES, LAYER_TYPES, read_meta
from gradprobe.store.schema import FORMAT_VERSION, TABLES
from conftest import run_cli
from test_analysis_support import noisy, write_run

pytestmark = pytest.mark.hostile("malformed run files")  # every case here is counted in the summary

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)


def one_line_naming(exc: GradprobeError, file: Path) -> None:
    message = str(exc)
    assert "\n" not in message and message.startswith(str(file)), message


def small_run(root: Path, name: str = "run") -> Path:
    layers = np.stack([noisy(40, 0.5, 0.1, s) for s in range(2)], axis=1)
    write_run(root, name, noisy(40), layers, ["fc.weight", "fc.bias"], every=2, loss=np.linspace(2, 1, 40))
    return root / name


def render_everything(run: gradprobe.Run) -> None:
    """What ``report`` does in its text formats, and what ``ls`` shows."""
    report = build_report(run, strategies=("percentile",))
    json.loads(render_json(report))
    render_markdown(report)
    console = Console(file=io.StringIO(), width=120)
    render_report(report, console)
    render_run_list([run], console)


# -- run.json ---------------------------------------------------------------------------------


@FUZZ
@given(content=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_run_json_of_random_bytes_is_one_clean_error(tmp_path, content):
    (tmp_path / "run.json").write_bytes(content)
    try:
        meta = read_meta(tmp_path)
    except RunFormatError as exc:
        one_line_naming(exc, tmp_path / "run.json")
    else:  # random bytes that happen to be a valid run.json
        assert meta["format_version"] <= FORMAT_VERSION


@pytest.mark.parametrize("content, message", [
    ("[" * 100_000, "nested too deeply"),
    ('{"format_version": 1, "status": "finished", "exit_code": ' + "9" * 5000 + "}", "not valid JSON"),
    (b"\xff\xfe{}", "cannot be read"),
])
def test_run_json_that_breaks_the_json_parser_is_named(tmp_path, content, message):
    (tmp_path / "run.json").write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(RunFormatError, match=message) as info:
        read_meta(tmp_path)
    one_line_naming(info.value, tmp_path / "run.json")


@FUZZ
@given(data=st.data())
def test_run_json_with_a_field_of_the_wrong_type_is_read_or_named(tmp_path_factory, data):
    path = small_run(tmp_path_factory.mktemp("runs"))
    meta = json.loads((path / "run.json").read_text())
    where = data.draw(st.sampled_from(["top", "layer", "missing-layer-field"]))
    if where == "top":
        key = data.draw(st.sampled_from(sorted(FIELD_TYPES) + ["format_version", "status"]))
        meta[key] = data.draw(json_values)
    elif where == "layer":
        key = data.draw(st.sampled_from(sorted(LAYER_TYPES)))
        meta["layers"][1][key] = data.draw(json_values)
    else:
        del meta["layers"][0][data.draw(st.sampled_from(sorted(LAYER_TYPES)))]
    (path / "run.json").write_text(json.dumps(meta))
    try:
        run = gradprobe.load_run(path)
        render_everything(run)
    except RunFormatError as exc:
        one_line_naming(exc, path)


def test_a_future_format_version_names_the_file_and_the_fix(tmp_path):
    path = small_run(tmp_path)
    meta = json.loads((path / "run.json").read_text())
    (path / "run.json").write_text(json.dumps({**meta, "format_version": FORMAT_VERSION + 1}))
    result = run_cli("report", str(path), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"gradprobe: error: {path / 'run.json'}: format version {FORMAT_VERSION + 1} "
                                     f"is newer than this gradprobe reads ({FORMAT_VERSION}); upgrade gradprobe")
    debug = run_cli("--debug", "report", str(path), cwd=tmp_path)
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr and "RunFormatError" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == result.stderr.strip()


# -- Parquet parts ------------------------------------------------------------------------------

column_faults = st.sampled_from(["drop", "string", "list", "null"])


def _break_column(table: pa.Table, column: str, fault: str) -> pa.Table:
    index = table.column_names.index(column)
    n = table.num_rows
    if fault == "drop":
        return table.remove_column(index)
    if fault == "string":
        return table.set_column(index, column, pa.array(["x"] * n))
    if fault == "list":
        return table.set_column(index, column, pa.array([[1.0]] * n))
    return table.set_column(index, column, pa.nulls(n, table.schema.field(column).type))


@FUZZ
@given(data=st.data())
def test_parts_with_missing_or_mistyped_columns_are_read_or_named(tmp_path_factory, data):
    path = small_run(tmp_path_factory.mktemp("runs"))
    table = data.draw(st.sampled_from(["layers", "steps"]))
    part = sorted((path / "parts").glob(f"{table}-*.parquet"))[0]
    broken = pq.read_table(part)
    for column in data.draw(st.lists(st.sampled_from(broken.column_names), min_size=1, max_size=3, unique=True)):
        broken = _break_column(broken, column, data.draw(column_faults))
    pq.write_table(broken, part)
    try:
        run = gradprobe.load_run(path)
        frame = run.steps if table == "steps" else run.layers
        for field in TABLES[table]:
            assert field.name in frame.columns
        render_everything(run)
    except RunFormatError as exc:
        one_line_naming(exc, path)


@FUZZ
@given(content=st.binary(max_size=400) | st.just(b"PAR1" + bytes(200) + b"PAR1"))
def test_a_part_of_random_bytes_is_skipped_with_a_warning(tmp_path_factory, content, capsys):
    path = small_run(tmp_path_factory.mktemp("runs"))
    (path / "parts" / "steps-r0-000009.parquet").write_bytes(content)
    steps = gradprobe.load_run(path).steps
    assert list(steps["step"]) == list(range(40))
    assert "skipping unreadable part" in capsys.readouterr().err


def test_layer_rows_for_layers_run_json_does_not_know_are_named(tmp_path):
    path = small_run(tmp_path)
    part = sorted((path / "parts").glob("layers-*.parquet"))[0]
    table = pq.read_table(part)
    index = table.column_names.index("layer")
    pq.write_table(table.set_column(index, "layer", pa.array(np.full(table.num_rows, 7, np.int32))), part)
    with pytest.raises(RunFormatError, match="refer to id.s. 7 missing from run.json 'layers'") as info:
        _ = gradprobe.load_run(path).layers
    one_line_naming(info.value, path)


# -- recommendation files -----------------------------------------------------------------------


@FUZZ
@given(document=json_values | st.fixed_dictionaries({"recommendations": st.lists(json_values, max_size=3)}))
def test_recommendation_files_of_any_shape_give_a_spec_or_name_the_file(tmp_path, document):
    file = tmp_path / "recommendation.json"
    file.write_text(json.dumps(document))
    try:
        spec = load_recommended_spec(file)
    except GradprobeError as exc:
        one_line_naming(exc, file)
    else:
        assert spec == document["recommendations"][0]["spec"]


# -- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize("args, problem", [
    (["report", "RUN"], "run.json: expected a JSON object, found list"),
    (["recommend", "RUN"], "run.json: expected a JSON object, found list"),
    (["compare", "RUN", "RUN"], "run.json: expected a JSON object, found list"),
    (["export", "RUN", "--csv", "out"], "run.json: expected a JSON object, found list"),
    (["run", "--clip-from", "RUN/recommendation.json", "train.py"], "recommendation.json: cannot be read"),
    (["run", "--clip", "global-norm:max=-1", "train.py"], "global-norm"),
    (["run", "--clip", "zclip:z=2.5+" + "x" * 300, "train.py"], "unknown clip policy"),
])
def test_cli_bad_input_is_one_line_and_a_non_zero_exit(tmp_path, args, problem):
    run_dir = small_run(tmp_path)
    (run_dir / "run.json").write_text("[1, 2]")
    (run_dir / "recommendation.json").write_bytes(b"\x80\x04\x95 not json")
    (tmp_path / "train.py").write_text("open('started', 'w').write('yes')\n")
    result = run_cli(*[str(run_dir) + a[3:] if a.startswith("RUN") else a for a in args], cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradprobe: error: ") and problem in lines[0], result.stderr
    assert not (tmp_path / "started").exists()


def test_an_unexpected_error_is_one_line_unless_debug(tmp_path):
    path = small_run(tmp_path)
    crash = ("import sys; import gradprobe.reports.summary as s\n"
             "def boom(*a, **k): raise ZeroDivisionError('a bug')\n"
             "s.build_report = boom\n"
             "from gradprobe.cli.app import main\n"
             "sys.argv = ['gradprobe', *sys.argv[1:]]\n"
             "main()\n")
    (tmp_path / "crash.py").write_text(crash)
    import subprocess

    plain = subprocess.run([sys.executable, "crash.py", "report", str(path)], cwd=tmp_path, capture_output=True,
                           text=True)
    assert plain.returncode == 1
    assert plain.stderr.strip() == ("gradprobe: internal error: ZeroDivisionError: a bug "
                                    "(run `gradprobe --debug ...` for the traceback)")
    debug = subprocess.run([sys.executable, "crash.py", "--debug", "report", str(path)], cwd=tmp_path,
                           capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == "gradprobe: internal error: ZeroDivisionError: a bug"


@pytest.mark.parametrize("field, value, problem", [
    ("start_time", float("nan"), "'start_time' must be a Unix time in seconds, found nan"),
    ("end_time", 1e300, "'end_time' must be a Unix time in seconds"),
    ("pid", 2**40, "'pid' must be a process id"),
    ("pid", -1, "'pid' must be a process id"),
    ("optimizers", [{"index": [1]}], "'optimizers' must be a list of objects with an integer 'index'"),
    ("exit_code", "0", "'exit_code' must be an integer, found a string"),
    ("incomplete", "yes", "'incomplete' must be true or false"),
    ("argv", ["train.py", 3], "'argv' must be a list of strings"),
])
def test_run_json_values_renderers_cannot_use_are_named(tmp_path, field, value, problem):
    path = small_run(tmp_path)
    meta = json.loads((path / "run.json").read_text())
    (path / "run.json").write_text(json.dumps({**meta, field: value, "status": "running"}))
    with pytest.raises(RunFormatError) as info:
        gradprobe.load_run(path)
    assert str(info.value).startswith(f"{path / 'run.json'}: {problem}")


# -- options ------------------------------------------------------------------------------------


@pytest.mark.hostile("option errors")
@pytest.mark.parametrize("args, problem", [
    (["profile", "--every", "0", "train.py"], "--every: Input should be greater than or equal to 1"),
    (["profile", "--flush-every", "abc", "train.py"], "--flush-every: Input should be a valid integer"),
    (["profile", "--max-steps", "-5", "train.py"], "--max-steps: Input should be greater than or equal to 1"),
    (["profile", "--no-such-option", "train.py"], "No such option: --no-such-option"),
    (["report", "--format", "bogus"], "--format / -f: "),
    (["profile"], "Missing argument 'script'"),
    (["tune", "--repeats", "0", "train.py"], "--repeats: "),
    (["frobnicate"], "No such command 'frobnicate'"),
])
def test_an_option_error_is_one_line_and_exit_2(tmp_path, args, problem):
    (tmp_path / "train.py").write_text("open('started', 'w')\n")
    result = run_cli(*args, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("gradprobe: error: ") and problem in lines[0], lines[0]
    assert lines[0].endswith("--help`)") and result.stdout == ""
    assert not (tmp_path / "started").exists()


@pytest.mark.hostile("option bounds")
@pytest.mark.parametrize("args, option", [
    (["profile", "--flush-every", "300000000", "train.py"], "--flush-every"),
    (["profile", "--flush-every", "9" * 40, "train.py"], "--flush-every"),
    (["run", "--clip", "global-norm:max=1", "--flush-every", "10001", "train.py"], "--flush-every"),
    (["profile", "--every", "9" * 30, "train.py"], "--every"),
    (["profile", "--nproc-per-node", "100000", "train.py"], "--nproc-per-node"),
    (["tune", "--repeats", "1000000000", "train.py"], "--repeats"),
    (["tune", "--jobs", "100000", "train.py"], "--jobs"),
    (["tune", "--timeout", "nan", "train.py"], "--timeout"),
    (["tune", "--timeout", "1e300", "train.py"], "--timeout"),
])
def test_options_that_size_memory_or_processes_have_a_ceiling(tmp_path, args, option):
    (tmp_path / "train.py").write_text("open('started', 'w')\n")
    result = run_cli(*args, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"gradprobe: error: {option}"), \
        result.stderr
    assert not (tmp_path / "started").exists() and not (tmp_path / "gradprobe-runs").exists()


@pytest.mark.hostile("option bounds")
@pytest.mark.parametrize("settings, problem", [
    ({"flush_every": 300_000_000}, "--flush-every must be between 1 and 10000 (got 300000000)"),
    ({"every": 10**12}, "--every must be between 1 and 1000000000"),
    ({"flush_every": 0}, "--flush-every must be between 1 and 10000 (got 0)"),
    ({"flush_seconds": float("nan")}, "flush_seconds must be a positive number"),
])
def test_the_python_api_checks_the_same_ceilings(settings, problem):
    from gradprobe.recording.session import Sampling

    with pytest.raises(GradprobeError, match=re.escape(problem)):
        Sampling(**settings)



@pytest.mark.hostile("unbounded read")
def test_the_json_bounds_are_exact(tmp_path):
    from gradprobe.store.json_file import (
        MAX_DEPTH,
        MAX_DIGITS,
        MAX_TEXT,
        JSONFileError,
        read_json_file,
    )

    file = tmp_path / "doc.json"
    cases = [("[" * MAX_DEPTH + "]" * MAX_DEPTH, None), ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested"),
             ("9" * MAX_DIGITS, None), ("-" + "9" * (MAX_DIGITS + 1), "digits"), ("1" * 2 + " " * 98, None)]
    for text, problem in cases:
        file.write_text(text)
        if problem is None:
            assert read_json_file(file, 100) == json.loads(text)
        else:
            with pytest.raises(JSONFileError, match=problem):
                read_json_file(file, 100)
    file.write_text(" " * 101)
    with pytest.raises(JSONFileError, match="larger than 100 bytes"):
        read_json_file(file, 100)
    file.write_text(json.dumps({"a": ["x" * (MAX_TEXT + 5), "y" * MAX_TEXT]}))
    assert read_json_file(file, 1 << 20) == {"a": ["x" * MAX_TEXT + "... (5 more characters)", "y" * MAX_TEXT]}
