"""A run survives what ordinary scripts do: changing directory, training in two threads at once,
and a disk that fills up during training."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require, run_cli

torch = require("torch")

import gradprobe  # noqa: E402
from gradprobe.store.writer import RunWriter  # noqa: E402


def only_run(root: Path) -> gradprobe.Run:
    runs = gradprobe.list_runs(root)
    assert len(runs) == 1, runs
    return runs[0]


def leftovers(run_dir: Path) -> list[str]:
    """Temporary or reserve files left in a run directory."""
    return sorted(p.name for p in run_dir.rglob(".*"))


CHDIR = """
import os, torch
os.makedirs("elsewhere", exist_ok=True)
os.chdir("elsewhere")
model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for _ in range(30):
    opt.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()
"""


@pytest.mark.parametrize("out", [None, "runs", "./sub/runs"], ids=["default", "relative", "nested"])
def test_a_script_that_changes_directory_keeps_its_run(tmp_path, out):
    (tmp_path / "train.py").write_text(CHDIR)
    options = [] if out is None else ["--out", out]
    result = run_cli("profile", "-q", "--flush-every", "7", *options, "train.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "cannot write" not in result.stderr
    run = only_run(tmp_path / (out or "gradprobe-runs"))
    assert run.meta["status"] == "finished" and not run.meta.get("incomplete")
    assert list(run.steps["step"]) == list(range(30))
    assert run.meta["progress"]["steps"] == 30
    assert not (tmp_path / "elsewhere" / (out or "gradprobe-runs")).exists()


TWO_THREADS = """
import threading, torch
def train(seed):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
threads = [threading.Thread(target=train, args=(seed,)) for seed in (1, 2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_two_threads_training_at_once_lose_no_step(tmp_path):
    (tmp_path / "train.py").write_text(TWO_THREADS)
    result = run_cli("profile", "-q", "--out", "runs", "--every", "1", "--flush-every", "3", "train.py",
                     cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "cannot write" not in result.stderr
    run = only_run(tmp_path / "runs")
    assert run.meta["status"] == "finished" and not run.meta.get("incomplete")
    assert len(run.meta["optimizers"]) == 2
    for optimizer in (0, 1):
        steps = run.steps[run.steps["optimizer"] == optimizer]
        assert sorted(steps["step"]) == list(range(150))
        layers = run.layers[run.layers["optimizer"] == optimizer]
        assert len(layers) == 150 * 4  # two weights and two biases per model, every step
    ids = [layer["id"] for layer in run.meta["layers"]]
    assert ids == list(range(8))
    assert run.meta["progress"]["steps"] == 300
    assert leftovers(run.path) == []


def test_a_failed_run_json_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, capsys):
    (tmp_path / "run").mkdir()
    writer = RunWriter(tmp_path / "run", {"status": "running"})
    before = (tmp_path / "run" / "run.json").read_text()

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    writer.update(status="finished")
    monkeypatch.undo()
    assert (tmp_path / "run" / "run.json").read_text() == before
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")] == []
    assert capsys.readouterr().err.count("No space left on device") == 1
    assert writer.failed and "No space left on device" in writer.meta["incomplete_reason"]


# Fills the file system holding the run at step 20, keeps it full and trains on.
FILL_DISK = """
import torch
torch.manual_seed(0)
model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(32, 4), torch.randn(32, 2)
for step in range(60):
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    if step == 20:
        with open("disk/filler", "wb", buffering=0) as filler:  # unbuffered: nothing left to fail on close
            try:
                while True:
                    filler.write(bytes(1 << 16))
            except OSError:
                pass
    opt.step()
print("trained")
"""


def _small_disk_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _small_disk_available(), reason="needs user namespaces to mount a small tmpfs")
def test_a_disk_that_fills_up_ends_the_run_incomplete_not_abrupt(tmp_path):
    (tmp_path / "train.py").write_text(FILL_DISK)
    (tmp_path / "disk").mkdir()
    profile = f"{sys.executable} -m gradprobe profile -q --out disk/runs --flush-every 5 train.py"
    command = f"mount -t tmpfs -o size=8m tmpfs disk && {profile}; code=$?; cp -r disk/runs saved; exit $code"
    result = subprocess.run(["unshare", "-rm", "sh", "-c", command], cwd=tmp_path, capture_output=True,
                            text=True, timeout=240, env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "trained\n"
    warnings = [line for line in result.stderr.splitlines() if "cannot write" in line]
    assert len(warnings) == 1 and "No space left on device" in warnings[0], result.stderr
    run = only_run(tmp_path / "saved")
    assert run.meta["status"] == "finished" and run.meta["exit_code"] == 0
    assert run.meta["incomplete"] is True and "No space left on device" in run.meta["incomplete_reason"]
    assert list(run.steps["step"]) == list(range(20))
    assert run.meta["progress"]["steps"] == 20
    assert leftovers(run.path) == []
    report = run_cli("report", str(run.path), cwd=tmp_path)
    text = " ".join(report.stdout.split())
    assert "incomplete" in text and "ended abruptly" not in text and "killed" not in text
