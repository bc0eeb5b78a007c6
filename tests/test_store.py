"""The run directory: naming, atomic metadata, append-only parts and a reader that explains problems."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

import gradprobe
from gradprobe.errors import GradprobeError, RunFormatError
from gradprobe.recording.session import Sampling, Session
from gradprobe.store.schema import FORMAT_VERSION


def flush(session: Session, steps: range, layer_ids=(0, 1)) -> None:
    n = len(steps)
    norms = np.linspace(1.0, 2.0, n, dtype=np.float32)
    session.append(
        {
            "step": np.asarray(steps), "optimizer": np.zeros(n), "rank": np.zeros(n), "time": np.arange(n) + 1e9,
            "global_norm": norms, "global_norm_post": norms, "clip_scale": np.ones(n),
            "clip_threshold": np.full(n, np.nan), "loss": norms * 2, "skipped": np.zeros(n, bool),
        },
        {
            "step": np.repeat(np.asarray(steps), len(layer_ids)), "optimizer": np.zeros(n * len(layer_ids)),
            "rank": np.zeros(n * len(layer_ids)), "layer": np.tile(layer_ids, n),
            "norm": np.repeat(norms, len(layer_ids)), "maxabs": np.ones(n * len(layer_ids)),
            "nonfinite": np.zeros(n * len(layer_ids)), "param_norm": np.ones(n * len(layer_ids)),
        },
    )


def new_session(tmp_path, **kwargs) -> Session:
    session = Session(out=tmp_path, script="train.py", **kwargs)
    session.add_layers([
        {"name": "fc.weight", "group": "fc", "shape": [2, 3], "numel": 6, "dtype": "float32", "optimizer": 0},
        {"name": "fc.bias", "group": "fc", "shape": [2], "numel": 2, "dtype": "float32", "optimizer": 0},
    ])
    return session


def test_parts_are_appended_and_read_back_in_order(tmp_path):
    session = new_session(tmp_path)
    flush(session, range(0, 5))
    flush(session, range(5, 8))
    session.close("finished", exit_code=0)
    run = gradprobe.load_run(session.path)
    assert run.meta["status"] == "finished" and run.meta["format_version"] == FORMAT_VERSION
    assert list(run.steps["step"]) == list(range(8))
    assert run.steps["global_norm"].dtype == np.float32
    assert list(run.layers["name"].astype(str)[:2]) == ["fc.weight", "fc.bias"]
    assert len(run.layers) == 16
    assert run.meta["progress"] == {"steps": 8, "flushes": 2}
    parts = sorted(p.name for p in (session.path / "parts").iterdir())
    assert parts == [f"{t}-r0-00000{i}.parquet" for t in ("layers", "steps") for i in (1, 2)]


def test_a_running_run_is_readable_between_flushes(tmp_path):
    session = new_session(tmp_path)
    flush(session, range(3))
    run = gradprobe.load_run(session.path)
    assert run.meta["status"] == "running" and len(run.steps) == 3


def test_repeated_layer_names_are_made_unique(tmp_path):
    session = new_session(tmp_path)
    ids = session.add_layers([{"name": "fc.weight", "group": "fc", "shape": [1], "numel": 1, "dtype": "float32",
                               "optimizer": 1}])
    assert ids == [2]
    assert [layer["name"] for layer in session.layers] == ["fc.weight", "fc.bias", "fc.weight#2"]


def test_concurrent_sessions_get_distinct_directories(tmp_path):
    paths, errors = [], []

    def start():
        try:
            paths.append(Session(out=tmp_path, script="same.py").path)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(paths)) == 8


@pytest.mark.parametrize("name", ["../up", "a/b", ".hidden", "", "x" * 300])
def test_unsafe_run_names_are_refused(tmp_path, name):
    with pytest.raises(GradprobeError, match="invalid run name"):
        Session(out=tmp_path, name=name)


def test_explicit_name_must_be_new(tmp_path):
    Session(out=tmp_path, name="exp1")
    with pytest.raises(GradprobeError, match="already exists"):
        Session(out=tmp_path, name="exp1")


def test_sampling_rejects_nonsense():
    with pytest.raises(GradprobeError, match="--every"):
        Sampling(every=0)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"status": "finished"}), "'format_version' is missing"),
        (json.dumps({"format_version": FORMAT_VERSION + 1, "status": "finished"}), "newer than this gradprobe"),
        (json.dumps({"format_version": 1, "status": "weird"}), "'status' must be one of"),
        (json.dumps({"format_version": 1, "status": "finished", "layers": [{"id": 0}]}), "'layers' must be"),
    ],
)
def test_bad_run_json_is_named_with_the_problem(tmp_path, content, message):
    (tmp_path / "run.json").write_text(content)
    with pytest.raises(RunFormatError, match=message) as info:
        gradprobe.load_run(tmp_path)
    assert str(tmp_path / "run.json") in str(info.value)


def test_truncated_part_is_skipped_with_a_warning(tmp_path, capsys):
    session = new_session(tmp_path)
    flush(session, range(0, 4))
    flush(session, range(4, 6))
    last = session.path / "parts" / "steps-r0-000002.parquet"
    last.write_bytes(last.read_bytes()[:40])
    run = gradprobe.load_run(session.path)
    assert list(run.steps["step"]) == [0, 1, 2, 3]
    assert "skipping unreadable part" in capsys.readouterr().err


def test_part_with_missing_column_is_an_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    session = new_session(tmp_path)
    pq.write_table(pa.table({"step": [0]}), session.path / "parts" / "steps-r0-000001.parquet")
    with pytest.raises(RunFormatError, match="missing column"):
        _ = gradprobe.load_run(session.path).steps


def test_unwritable_root_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(GradprobeError, match="cannot create run root"):
        Session(out=blocker / "runs")


def test_write_failure_during_run_warns_once_and_marks_incomplete(tmp_path, capsys, monkeypatch):
    session = new_session(tmp_path)
    flush(session, range(2))
    import pyarrow.parquet as pq

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    flush(session, range(2, 4))
    flush(session, range(4, 6))
    assert capsys.readouterr().err.count("No space left on device") == 1
    assert session.writer.meta["incomplete"] is True
    monkeypatch.undo()
    assert list(gradprobe.load_run(session.path).steps["step"]) == [0, 1]


def test_list_runs_is_ordered_and_skips_broken(tmp_path, capsys):
    first = new_session(tmp_path).path
    second = new_session(tmp_path).path
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run.json").write_text("{")
    assert [run.path for run in gradprobe.list_runs(tmp_path)] == [first, second]
    assert "skipping" in capsys.readouterr().err
