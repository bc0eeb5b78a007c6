"""The CLI's own face: --help without type noise and with usual usage lines, framework logs kept quiet."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from conftest import require, run_cli

# Written out by hand: what each command's usage line must read.
USAGE = {
    "profile": "gradprobe profile [OPTIONS] SCRIPT [ARGS]...",
    "run": "gradprobe run [OPTIONS] SCRIPT [ARGS]...",
    "tune": "gradprobe tune [OPTIONS] SCRIPT [ARGS]...",
    "apply": "gradprobe apply [OPTIONS] SCRIPT",
    "export": "gradprobe export [OPTIONS] [RUN]",
    "report": "gradprobe report [OPTIONS] [RUN]...",
    "recommend": "gradprobe recommend [OPTIONS] [RUN]",
    "compare": "gradprobe compare [OPTIONS] RUN_A RUN_B",
    "ls": "gradprobe ls [OPTIONS] [ROOT]",
}


def _help(*args: str) -> str:
    result = run_cli(*args, "--help", cwd=Path.cwd(), env={"COLUMNS": "120"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_every_command_is_listed_with_a_usage_line_and_no_type_beside_a_flag():
    root = _help()
    assert "Usage: gradprobe [OPTIONS] COMMAND [ARGS]..." in root
    listed = re.findall(r"^│ (\w+) ", root.split("Commands")[1], flags=re.M)
    assert sorted(listed) == sorted(USAGE)
    for command, usage in USAGE.items():
        text = _help(command)
        assert "<bool>" not in text
        assert re.findall(r"^\s*Usage: (.*?)\s*$", text, flags=re.M) == [usage]
        for line in (line for line in text.splitlines() if re.search(r"--(help|quiet|verbose|maximize)\b", line)):
            assert "<" not in line, (command, line)  # a flag takes no value
    assert "<bool>" not in root
    every = next(line for line in _help("run").splitlines() if "--every" in line)
    assert "1<=x<=1000000000" in every  # options that take a value keep their type and range


SHOW_ENV = """
import logging, os
print(os.environ.get("TF_CPP_MIN_LOG_LEVEL"), logging.getLogger("tensorflow").level, logging.getLogger("absl").level)
"""


@pytest.mark.parametrize("options,env,expected", [
    ([], {}, f"2 {logging.ERROR} {logging.ERROR}"),
    (["--verbose"], {}, "None 0 0"),
    ([], {"TF_CPP_MIN_LOG_LEVEL": "0"}, f"0 {logging.ERROR} {logging.ERROR}"),
], ids=["quiet-by-default", "verbose", "user-setting-kept"])
def test_framework_logging_is_quiet_under_gradprobe_unless_verbose_or_set_by_the_user(tmp_path, monkeypatch,
                                                                                      options, env, expected):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    (tmp_path / "train.py").write_text(SHOW_ENV)
    result = run_cli("profile", "-q", *options, "train.py", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == expected


TF_NOISE = """
import tensorflow as tf
tf.get_logger().warning("a tensorflow python warning")
print(float(tf.reduce_sum(tf.ones([3]))))
"""


@pytest.mark.slow
def test_tensorflow_info_and_warning_lines_are_not_shown_under_gradprobe(tmp_path, monkeypatch):
    require("tensorflow")
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    import subprocess
    import sys

    (tmp_path / "train.py").write_text(TF_NOISE)
    plain = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    noise = ("cpu_feature_guard", "WARNING:tensorflow:a tensorflow python warning")
    assert plain.stdout == "3.0\n" and all(line in plain.stderr for line in noise)  # the noise is real
    profiled = run_cli("profile", "-q", "train.py", cwd=tmp_path)
    assert profiled.returncode == 0 and profiled.stdout == plain.stdout, profiled.stderr
    assert not any(line in profiled.stderr for line in noise), profiled.stderr


TINY = """
import sys, torch
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(int(sys.argv[1])):
    opt.zero_grad()
    model(torch.randn(16, 4) * (1 + step % 5)).pow(2).mean().backward()
    opt.step()
"""


def test_recommend_suggests_one_copyable_command_that_runs_the_recorded_script_with_the_advice(tmp_path):
    import shlex

    import gradprobe

    (tmp_path / "my script.py").write_text(TINY)
    narrow = {"COLUMNS": "40"}
    assert run_cli("profile", "-q", "--name", "base", "my script.py", "30", cwd=tmp_path, env=narrow).returncode == 0
    advised = run_cli("recommend", "base", cwd=tmp_path, env=narrow)
    assert advised.returncode == 0, advised.stderr
    (line,) = [line for line in advised.stderr.splitlines() if line.startswith("gradprobe: use it: ")]
    command = shlex.split(line.removeprefix("gradprobe: use it: "))
    assert command == ["gradprobe", "run", "--clip-from", "gradprobe-runs/base", "my script.py", "--", "30"]
    applied = run_cli(*command[1:4], "--name", "advised", *command[4:], cwd=tmp_path, env=narrow)  # as printed
    assert applied.returncode == 0, applied.stderr
    runs = tmp_path / "gradprobe-runs"
    recommended = json.loads((runs / "base" / "recommendation.json").read_text())["recommendations"][0]["spec"]
    advised_run = gradprobe.load_run(runs / "advised").meta
    assert advised_run["argv"] == gradprobe.load_run(runs / "base").meta["argv"] == ["my script.py", "30"]
    assert advised_run["clip"] == str(gradprobe.parse_spec(recommended))
