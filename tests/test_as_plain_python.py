"""Under `gradprobe profile` a script ends as it would under plain Python: the same exit status,
the same death by SIGTERM, its own ``sys.excepthook``, and tracebacks without gradprobe's frames."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gradprobe
import gradprobe.cli
import gradprobe.reports
from conftest import require, run_cli

# gradprobe's own sources: the core, and the CLI and renderers wherever they are installed from.
GRADPROBE_DIRS = tuple(str(Path(module.__file__).resolve().parent) + os.sep
                       for module in (gradprobe, gradprobe.cli, gradprobe.reports))


def only_run(root: Path) -> gradprobe.Run:
    runs = gradprobe.list_runs(root)
    assert len(runs) == 1, runs
    return runs[0]


def plain(script: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script)], cwd=cwd, capture_output=True, text=True, timeout=240,
                          check=False)


def traceback_files(stderr: str) -> list[tuple[str, str]]:
    """The (file, function) of every frame the tracebacks in ``stderr`` show."""
    return re.findall(r'^  File "([^"]+)", line \d+, in (\S+)$', stderr, flags=re.MULTILINE)


@pytest.mark.parametrize("code, status", [
    ("True", 1), ("False", 0), ("256", 0), ("257", 1), ("-1", 255), ("2**70", 255), ("'bye'", 1), ("None", 0),
])
def test_exit_status_is_the_one_python_gives(tmp_path, code, status):
    script = tmp_path / "train.py"
    script.write_text(f"import sys\nsys.exit({code})\n")
    expected = plain(script, tmp_path)
    assert expected.returncode == status
    result = run_cli("profile", "--out", "runs", str(script), cwd=tmp_path)
    assert result.returncode == status, result.stderr
    run = only_run(tmp_path / "runs")
    stored = json.loads((run.path / "run.json").read_text())["exit_code"]
    assert type(stored) is int and stored == status
    assert run.meta["status"] == ("finished" if status == 0 else "crashed")
    assert run_cli("report", str(run.path), cwd=tmp_path).returncode == 0


def test_an_out_of_range_seed_is_one_line_before_the_script_runs(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("open('started', 'w').write('yes')\nimport torch\n")
    for seed in (str(2**64), str(-(2**63) - 1)):
        result = run_cli("profile", "--out", "runs", "--seed", seed, str(script), cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"gradprobe: error: --seed {seed} is out of range: use an integer from -2**63 to 2**64-1"]
        assert not (tmp_path / "started").exists() and not (tmp_path / "runs").exists()


HOOKED = """
import sys
def hook(kind, value, tb):
    print(f"hooked {kind.__name__}: {value}; frames from {tb.tb_frame.f_code.co_filename}", file=sys.stderr)
sys.excepthook = hook
raise ValueError("boom")
"""


def test_the_scripts_own_excepthook_is_called(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(HOOKED)
    expected = plain(script, tmp_path)
    result = run_cli("profile", "--out", "runs", str(script), cwd=tmp_path)
    assert result.returncode == expected.returncode == 1
    hooked = [line for line in result.stderr.splitlines() if line.startswith("hooked")]
    assert hooked == expected.stderr.splitlines() == [f"hooked ValueError: boom; frames from {script}"]
    assert "Traceback" not in result.stderr
    assert only_run(tmp_path / "runs").meta["status"] == "crashed"


# Trains in a retry loop that swallows everything; SIGTERM still ends it, and `finally` never runs.
RETRY_LOOP = """
import pathlib, torch
torch.manual_seed(0)
model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x = torch.randn(8, 4)
step = 0
try:
    while True:
        try:
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
            step += 1
            if step == 50:
                pathlib.Path("ready").write_text("1")
        except:  # noqa: E722
            pass
finally:
    pathlib.Path("finally_ran").write_text("1")
"""


def _terminate_when_ready(command: list[str], cwd: Path) -> tuple[int, str]:
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while not (cwd / "ready").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the script did not start training: {proc.communicate()}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_sigterm_kills_the_script_as_python_does_and_keeps_the_run(tmp_path):
    require("torch")
    script = tmp_path / "train.py"
    script.write_text(RETRY_LOOP)
    code, _ = _terminate_when_ready([sys.executable, str(script)], tmp_path)
    assert code == -signal.SIGTERM and not (tmp_path / "finally_ran").exists()
    (tmp_path / "ready").unlink()
    code, err = _terminate_when_ready([sys.executable, "-m", "gradprobe", "profile", "-q", "--out", "runs",
                                       "--flush-every", "1000", str(script)], tmp_path)
    assert code == -signal.SIGTERM, err
    assert not (tmp_path / "finally_ran").exists()
    run = only_run(tmp_path / "runs")
    assert run.meta["status"] == "interrupted" and run.meta["exit_code"] == 143
    assert run.meta["error"] == "terminated by SIGTERM"
    steps = run.steps["step"].to_numpy()
    assert len(steps) >= 50 and (steps == range(len(steps))).all()  # the unflushed tail was written too
    assert "gradprobe: run interrupted" in err


# Ctrl-C arrives while gradprobe reads the gradients (inside its deferred-signal section).
INTERRUPTED_IN_HOOK = """
import os, signal, torch
torch.manual_seed(0)
model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
norms = torch._foreach_norm
def interrupting(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    return norms(*args, **kwargs)
torch._foreach_norm = interrupting
for step in range(100):
    opt.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()
"""


def test_a_keyboard_interrupt_traceback_has_no_gradprobe_frame(tmp_path):
    require("torch")
    script = tmp_path / "train.py"
    script.write_text(INTERRUPTED_IN_HOOK)
    result = run_cli("profile", "--out", "runs", str(script), cwd=tmp_path)
    assert result.returncode == -signal.SIGINT
    frames = traceback_files(result.stderr)
    assert frames and frames[0] == (str(script), "<module>")
    assert [f for f, _ in frames if f.startswith(GRADPROBE_DIRS)] == []
    assert "KeyboardInterrupt" in result.stderr.strip().splitlines()[-2]
    assert only_run(tmp_path / "runs").meta["status"] == "interrupted"


# clip_grad_norm_ fails on a NaN gradient; gradprobe records through its own clip_grad_norm_ wrapper.
CLIP_CRASH = """
import torch
model = torch.nn.Linear(4, 2)
model(torch.randn(8, 4)).pow(2).mean().backward()
model.weight.grad[0, 0] = float("nan")
torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=True)
"""


def test_a_pytorch_crash_traceback_is_the_one_python_prints(tmp_path):
    require("torch")
    script = tmp_path / "train.py"
    script.write_text(CLIP_CRASH)
    expected = plain(script, tmp_path)
    result = run_cli("profile", "--out", "runs", str(script), cwd=tmp_path)
    assert result.returncode == expected.returncode == 1
    assert traceback_files(result.stderr) == traceback_files(expected.stderr) != []
    assert result.stderr.strip().splitlines()[-2] == expected.stderr.strip().splitlines()[-1]


# A Keras layer fails inside fit (batch 3) and inside a custom loop's model call.
KERAS_CRASH = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, keras, tensorflow as tf
class Fails(keras.layers.Layer):
    calls = 0
    def call(self, x):
        Fails.calls += 1
        if Fails.calls > 3:
            raise ValueError("layer failed")
        return x
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), Fails(), keras.layers.Dense(1)])
model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
x, y = np.zeros((64, 4), "float32"), np.zeros((64, 1), "float32")
if sys.argv[1] == "fit":
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
else:
    opt = keras.optimizers.SGD()
    for _ in range(10):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - y))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
"""


@pytest.mark.slow
@pytest.mark.tensorflow
@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_a_keras_crash_traceback_is_the_one_python_prints(tmp_path, loop):
    require("tensorflow")
    script = tmp_path / "train.py"
    script.write_text(KERAS_CRASH)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    expected = subprocess.run([sys.executable, str(script), loop], cwd=tmp_path, capture_output=True, text=True,
                              timeout=240, env=env, check=False)
    result = run_cli("profile", "--out", "runs", str(script), loop, cwd=tmp_path, env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == expected.returncode == 1
    assert traceback_files(result.stderr) == traceback_files(expected.stderr) != []
    assert "layer failed" in result.stderr
    assert only_run(tmp_path / "runs").meta["status"] == "crashed"
