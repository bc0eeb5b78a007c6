"""`gradprobe profile` runs a script exactly as Python would, and the run survives how it ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gradprobe
from conftest import REPO, run_cli

ENV_PROBE = """
import json, os, sys
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "name": __name__,
                  "file": __file__}))
"""

TRAIN_LOOP = """
import sys, time, pathlib
import torch
torch.manual_seed(0)
model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(32, 4), torch.randn(32, 2)
steps = int(sys.argv[1])
for step in range(steps):
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    if step == 50:
        pathlib.Path("ready").write_text("1")
{ending}
"""


def only_run(root: Path) -> gradprobe.Run:
    runs = gradprobe.list_runs(root)
    assert len(runs) == 1, runs
    return runs[0]


def test_script_sees_what_python_gives_it(tmp_path, write_script):
    script = write_script(ENV_PROBE, name="probe.py")
    workdir = tmp_path / "work"
    workdir.mkdir()
    args = [os.path.relpath(script, workdir), "a", "--epochs", "3", "--", "x"]
    plain = subprocess.run([sys.executable, *args], cwd=workdir, capture_output=True, text=True, check=True)
    profiled = run_cli("profile", "--out", str(tmp_path / "runs"), args[0], "--", *args[1:], cwd=workdir)
    assert profiled.returncode == 0, profiled.stderr
    assert json.loads(profiled.stdout) == json.loads(plain.stdout)
    assert "gradprobe: run finished" in profiled.stderr


def test_script_arguments_need_no_separator(tmp_path, write_script):
    script = write_script(ENV_PROBE, name="probe.py")
    result = run_cli("profile", "--out", str(tmp_path / "runs"), str(script), "--epochs", "3", cwd=tmp_path)
    assert json.loads(result.stdout)["argv"] == [str(script), "--epochs", "3"]


@pytest.mark.parametrize(
    "ending, code, status, error",
    [
        ("", 0, "finished", None),
        ("sys.exit(3)", 3, "crashed", "SystemExit: 3"),
        ("sys.exit(0)", 0, "finished", None),
        ("raise ValueError('boom at the end')", 1, "crashed", "ValueError: boom at the end"),
    ],
)
def test_exit_code_and_status_follow_the_script(tmp_path, write_script, ending, code, status, error):
    script = write_script(TRAIN_LOOP.replace("{ending}", ending))
    plain = subprocess.run([sys.executable, str(script), "130"], cwd=tmp_path, capture_output=True, text=True)
    result = run_cli("profile", "--out", "runs", "--flush-every", "100", str(script), "130", cwd=tmp_path)
    assert result.returncode == plain.returncode == code
    run = only_run(tmp_path / "runs")
    assert run.meta["status"] == status
    assert run.meta["exit_code"] == code
    assert run.meta["error"] == error
    # 130 steps with a flush every 100: the in-memory tail is written too.
    assert list(run.steps["step"]) == list(range(130))


def test_crash_traceback_points_into_the_script(tmp_path, write_script):
    script = write_script(TRAIN_LOOP.replace("{ending}", "raise ValueError('boom')"))
    result = run_cli("profile", "--out", "runs", str(script), "5", cwd=tmp_path)
    assert "Traceback" in result.stderr
    assert f'File "{script}"' in result.stderr
    assert "runpy" not in result.stderr and "gradprobe/launcher.py" not in result.stderr
    assert result.stderr.strip().splitlines()[-2].startswith("ValueError: boom")


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, "interrupted"), (signal.SIGINT, "interrupted")])
def test_signal_keeps_recorded_steps_and_dies_like_python(tmp_path, write_script, sig, status):
    script = write_script(TRAIN_LOOP.replace("{ending}", "").replace("range(steps)", "__import__('itertools').count()"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gradprobe", "profile", "--out", "runs", str(script), "0"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "ready").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"script did not start training: {proc.communicate()}")
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -sig, err
    run = only_run(tmp_path / "runs")
    assert run.meta["status"] == status
    steps = run.steps["step"].to_numpy()
    assert len(steps) > 50 and (steps == range(len(steps))).all()


def test_max_steps_ends_the_script_cleanly(tmp_path, write_script):
    script = write_script(TRAIN_LOOP.replace("{ending}", "print('after loop')"))
    result = run_cli("profile", "--out", "runs", "--max-steps", "7", str(script), "1000", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "after loop" not in result.stdout
    run = only_run(tmp_path / "runs")
    assert run.meta["status"] == "finished" and run.meta["exit_code"] == 0
    assert "max steps" in run.meta["stop_reason"]
    assert len(run.steps) == 7


@pytest.mark.parametrize(
    "args, message",
    [
        (["profile", "missing.py"], "script not found: missing.py"),
        (["profile", "adir"], "adir is a directory"),
        (["profile", "bad.py"], "bad.py:2: syntax error"),
        (["profile", "--no-such-option", "ok.py"], "No such option"),
        (["profile", "--every", "0", "ok.py"], "--every"),
        (["profile", "--name", "../escape", "ok.py"], "invalid run name"),
        (["report", "nowhere"], "nowhere: no such run directory"),
        (["ls", "nowhere"], "nowhere: no such directory"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    (tmp_path / "adir").mkdir()
    (tmp_path / "bad.py").write_text("x = 1\ndef broken(:\n")
    (tmp_path / "ok.py").write_text("print('ran')\n")
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "ran" not in result.stdout
    assert not (tmp_path / "gradprobe-runs").exists() or not any((tmp_path / "gradprobe-runs").iterdir())


def test_script_without_framework_still_records_a_run(tmp_path):
    (tmp_path / "hello.py").write_text("print('hello')\n")
    result = run_cli("profile", "hello.py", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == "hello\n"
    run = only_run(tmp_path / "gradprobe-runs")
    assert run.meta["status"] == "finished" and run.meta["framework"] is None and run.steps.empty


def test_profiling_a_torch_script_does_not_import_tensorflow(tmp_path, write_script):
    script = write_script(TRAIN_LOOP.replace("{ending}", "print('tensorflow' in sys.modules)"))
    result = run_cli("profile", str(script), "3", cwd=tmp_path)
    assert result.stdout.strip() == "False", result.stderr


def test_quickstart_example_profiles_and_reports(tmp_path):
    result = run_cli("profile", str(REPO / "examples" / "quickstart.py"), "--", "--epochs", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "epoch 0: loss" in result.stdout
    run = only_run(tmp_path / "gradprobe-runs")
    assert len(run.steps) == 32  # 2048 samples / batch 64
    report = run_cli("report", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    for name in run.layer_table["name"]:
        assert name in report.stdout
    listing = run_cli("ls", cwd=tmp_path)
    assert run.name in listing.stdout and "finished" in listing.stdout


@pytest.mark.parametrize("signals, forwarded", [(True, []), (False, ["--no-signals"])])
def test_each_rank_gets_the_signals_switch(tmp_path, monkeypatch, signals, forwarded):
    import typer

    from gradprobe.cli import launch as launching

    script = tmp_path / "train.py"
    script.write_text("pass\n")
    started = []
    monkeypatch.setattr(launching, "launch_ranks", lambda nproc, path, args, options: started.append(options) or 0)
    with pytest.raises(typer.Exit):
        launching.launch(str(script), [], tmp_path, None, 10, None, 100, None, nproc=2, signals=signals)
    (options,) = started
    assert [o for o in options if "signals" in o] == forwarded
