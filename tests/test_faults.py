"""Fault injection: whatever happens to the process, the disk or the tensors, training goes on
unchanged and the run directory stays readable, saying what was lost."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import require, run_cli

torch = require("torch")
from torch import nn  # noqa: E402

import gradprobe  # noqa: E402
from gradprobe.store.schema import TABLES  # noqa: E402

pytestmark = pytest.mark.hostile("process, disk and tensor faults")  # every case here is counted in the summary

# Trains until killed; after each step writes how many steps it has taken (for the kill -9 test).
ENDLESS = """
import itertools, os, torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(32, 4), torch.randn(32, 2)
done = os.open("done", os.O_WRONLY | os.O_CREAT)
for step in itertools.count():
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    os.pwrite(done, f"{step + 1:012d}".encode(), 0)
"""

# A short deterministic loop; FAULT runs before the update of step INJECT_AT and after.
FINITE = """
import sys, torch
torch.manual_seed(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(32, 4), torch.randn(32, 2)
losses = []
for step in range(60):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    if step == 20:
        FAULT
    opt.step()
    losses.append(loss.item())
print(repr(losses))
print(repr(model.weight.detach().flatten().tolist()))
"""

# Trains until killed on data that depends only on the step; run as `train.py N` without gradprobe it
# stops after N steps and writes each step's loss and per-parameter gradient norms (torch's own).
DETERMINISTIC = """
import itertools, json, os, sys, time, torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
truth = int(sys.argv[1]) if len(sys.argv) > 1 else None
done = None if truth else os.open("done", os.O_WRONLY | os.O_CREAT)
rows = []
for step in itertools.count() if truth is None else range(truth):
    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(16, 4, generator=g), torch.randn(16, 2, generator=g)
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    if truth:
        rows.append({"loss": loss.item(),
                     **{n: torch.linalg.vector_norm(p.grad).item() for n, p in model.named_parameters()}})
    opt.step()
    if done is not None:
        os.pwrite(done, f"{step + 1:012d}".encode(), 0)
        time.sleep(0.002)
if truth:
    json.dump(rows, open("truth.json", "w"))
"""


def finite_script(tmp_path: Path, fault: str = "pass", name: str = "train.py") -> Path:
    path = tmp_path / name
    path.write_text(FINITE.replace("FAULT", fault))
    return path


def plain_output(script: Path, cwd: Path, *args: str) -> str:
    """What the script prints without gradprobe."""
    result = subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True,
                            check=True)
    return result.stdout


def only_run(root: Path) -> gradprobe.Run:
    runs = gradprobe.list_runs(root)
    assert len(runs) == 1, runs
    return runs[0]


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the script did not get there: {proc.communicate()}")
        time.sleep(0.05)


# -- the process killed outright -------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_loses_at_most_one_flush_interval_and_the_report_says_so(tmp_path):
    (tmp_path / "train.py").write_text(ENDLESS)
    flush_every = 40
    proc = subprocess.Popen([sys.executable, "-m", "gradprobe", "profile", "-q", "--out", "runs", "--flush-every",
                             str(flush_every), "train.py"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    parts = tmp_path / "runs"

    def taken() -> int:
        done = tmp_path / "done"
        return int(done.read_bytes() or 0) if done.exists() else 0

    wait_for(lambda: taken() > 3 * flush_every + 5, proc)
    # While the process trains, the report reads what was flushed and says the run is being written.
    live = run_cli("report", "--root", "runs", cwd=tmp_path)
    assert live.returncode == 0, live.stderr
    assert "still being written" in live.stdout
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    steps_taken = taken()

    run = only_run(parts)
    steps = run.steps["step"].to_numpy()
    assert run.meta["status"] == "running"
    assert list(steps) == list(range(len(steps)))
    assert len(steps) % flush_every == 0 and len(steps) >= 3 * flush_every
    # Recording happens before the step's update, so at most one step more than the script counted.
    assert 0 <= steps_taken + 1 - len(steps) <= flush_every
    assert set(run.layers["step"]) <= set(steps)
    assert run.ended_abruptly

    report = run_cli("report", "--root", "runs", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "ended abruptly" in report.stdout and "Traceback" not in report.stderr
    markdown = run_cli("report", "--root", "runs", "-f", "markdown", cwd=tmp_path)
    assert "ended abruptly" in markdown.stdout
    listing = run_cli("ls", "runs", cwd=tmp_path)
    assert "ended abruptly" in listing.stdout


KILL_FLUSH_EVERY = 16
# The script sleeps 2 ms a step and a kill lands at most 4 s after the start: fewer steps than this.
TRUE_STEPS = 2500


@pytest.fixture(scope="module")
def true_steps(tmp_path_factory) -> list[dict]:
    """Loss and per-parameter gradient norms of DETERMINISTIC's first steps, run without gradprobe."""
    where = tmp_path_factory.mktemp("truth")
    (where / "train.py").write_text(DETERMINISTIC)
    subprocess.run([sys.executable, "train.py", str(TRUE_STEPS)], cwd=where, check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads((where / "truth.json").read_text())


@pytest.mark.slow
@pytest.mark.hostile("kill -9 consistency")
@pytest.mark.parametrize("kill", range(20))
def test_kill_9_at_a_random_time_leaves_a_prefix_of_the_true_steps(tmp_path, true_steps, kill):
    """Killed at a random time (from start-up on for every fourth kill, else while it trains), the run
    holds true steps only, in order from step 0, with the losses and per-layer norms torch computes
    without gradprobe, and the steps lost (of step rows or of layer rows) are at most one flush interval."""
    (tmp_path / "train.py").write_text(DETERMINISTIC)
    delay = np.random.default_rng(kill).uniform(0, 4 if kill % 4 == 0 else 1.5)
    proc = subprocess.Popen([sys.executable, "-m", "gradprobe", "profile", "-q", "--out", "runs", "--every", "1",
                             "--flush-every", str(KILL_FLUSH_EVERY), "train.py"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    if kill % 4:  # wait for the first step: the file exists, empty, from before it
        wait_for(lambda: (tmp_path / "done").exists() and (tmp_path / "done").stat().st_size > 0, proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    taken = int((tmp_path / "done").read_bytes() or 0) if (tmp_path / "done").exists() else 0
    assert kill % 4 == 0 or taken >= 1  # the kill landed during training
    if not list(tmp_path.glob("runs/*/run.json")):  # killed before the run was created
        assert taken == 0 and list(tmp_path.glob("runs/*/parts/*.parquet")) == []
        return
    run = only_run(tmp_path / "runs")
    steps = run.steps
    assert run.meta["status"] == "running" and run.ended_abruptly
    assert len(steps) <= TRUE_STEPS and list(steps["step"]) == list(range(len(steps)))  # a prefix, in order
    assert 0 <= taken + 1 - len(steps) <= KILL_FLUSH_EVERY  # recorded before the update: at most one more
    np.testing.assert_allclose(steps["loss"], [row["loss"] for row in true_steps[:len(steps)]], rtol=1e-6)
    layers = run.layers
    # A flush writes the step rows, then the layer rows: a kill in between loses that flush's layer rows.
    sampled = sorted(set(layers["step"]))
    assert sampled == list(range(len(sampled))) and len(steps) - KILL_FLUSH_EVERY <= len(sampled) <= len(steps)
    assert len(layers) == 4 * len(sampled)
    for name, rows in layers.groupby("name", observed=True):
        np.testing.assert_allclose(rows["norm"], [true_steps[step][name] for step in rows["step"]], rtol=1e-5)

@pytest.mark.slow
def test_leftovers_of_a_write_cut_short_are_ignored_or_named(tmp_path):
    script = finite_script(tmp_path)
    assert run_cli("profile", "-q", "--out", "runs", "--flush-every", "10", str(script), cwd=tmp_path).returncode == 0
    run_dir = only_run(tmp_path / "runs").path
    # A kill during a write leaves temporary files behind and, at worst, a truncated last part.
    (run_dir / "parts" / ".steps-r0-000007.parquet.tmp").write_bytes(b"PAR1 half a part")
    (run_dir / ".run.json.999.tmp").write_text('{"format_version": 1, "sta')
    last = max((run_dir / "parts").glob("steps-r0-*.parquet"))
    kept = sorted(set(range(60)) - set(pq.read_table(last).column("step").to_pylist()))
    assert kept == list(range(kept[-1] + 1))  # the last part holds the last steps
    last.write_bytes(last.read_bytes()[:100])
    report = run_cli("report", "--root", "runs", "-f", "json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert f"skipping unreadable part {last.relative_to(tmp_path)}: " in report.stderr
    assert json.loads(report.stdout)["run"]["status"] == "finished"
    assert list(gradprobe.load_run(run_dir).steps["step"]) == kept

    # A half-written run.json (a copy cut short, a file system without atomic rename) is named.
    (run_dir / "run.json").write_text('{"format_version": 1, "status": "runn')
    broken = run_cli("report", str(run_dir), cwd=tmp_path)
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    assert broken.stderr.strip() == f"gradprobe: error: {run_dir / 'run.json'}: not valid JSON " \
                                    "(Unterminated string starting at at line 1)"
    listing = run_cli("ls", "runs", cwd=tmp_path)
    assert listing.returncode == 0
    assert f"skipping {(run_dir / 'run.json').relative_to(tmp_path)}: not valid JSON" in listing.stderr


# -- errors inside gradprobe's hooks ---------------------------------------------------------

ODD_TENSOR = """class Odd(torch.Tensor):
            @classmethod
            def __torch_function__(cls, func, types, args=(), kwargs=None):
                if "norm" in getattr(func, "__name__", ""):
                    raise RuntimeError("this tensor type has no norm")
                return super().__torch_function__(func, types, args, kwargs or {})
        for p in model.parameters():
            p.grad = p.grad.as_subclass(Odd)"""


@pytest.mark.slow
@pytest.mark.parametrize("command", [["profile"], ["run", "--clip", "global-norm:max=0.05"]], ids=["profile", "run"])
def test_a_hook_failure_on_an_odd_tensor_type_never_reaches_training(tmp_path, command):
    fault = "\n".join(line.removeprefix("        ") for line in ODD_TENSOR.splitlines())
    script = finite_script(tmp_path, fault.replace("\n", "\n        "))
    result = run_cli(*command, "-q", "--out", "runs", "--flush-every", "8", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    errors = [line for line in result.stderr.splitlines() if "internal error" in line]
    assert len(errors) == 1 and "this tensor type has no norm" in errors[0]
    assert ("recording and clipping stopped" if command[0] == "run" else "recording stopped") in errors[0]
    run = only_run(tmp_path / "runs")
    assert run.meta["status"] == "finished" and run.meta["incomplete"] is True
    assert "this tensor type has no norm" in run.meta["incomplete_reason"]
    assert list(run.steps["step"]) == list(range(20))  # every step before the failure
    if command[0] == "profile":  # training itself is exactly what it is without gradprobe
        assert result.stdout == plain_output(script, tmp_path)
    report = run_cli("report", "--root", "runs", cwd=tmp_path)
    assert "incomplete: internal error" in report.stdout


def test_a_failing_norm_kernel_is_reported_once_and_training_is_unchanged(tmp_path, monkeypatch, capsys):
    def train(watched: bool) -> list[float]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        for step in range(30):
            if step == 12 and watched:
                monkeypatch.setattr(torch, "_foreach_norm", broken)
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    def broken(*args, **kwargs):
        raise RuntimeError("injected kernel failure")

    expected = train(watched=False)
    with gradprobe.watch(out=tmp_path, every=1, flush_every=5) as rec:
        got = train(watched=True)
    monkeypatch.undo()
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    err = capsys.readouterr().err
    assert err.count("internal error") == 1 and "injected kernel failure" in err
    run = rec.load()
    assert run.meta["status"] == "finished" and run.meta["incomplete"] is True
    assert list(run.steps["step"]) == list(range(12))


# -- storage ------------------------------------------------------------------------------


def test_an_unusable_run_root_stops_before_the_script_starts(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("open('started', 'w').write('yes')\n")
    (tmp_path / "blocker").write_text("a file where the root should go")
    result = run_cli("profile", "--out", "blocker/runs", str(script), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "gradprobe: error: cannot create run root blocker/runs: Not a directory"]
    assert not (tmp_path / "started").exists()


DISK_FULL = """import pyarrow.parquet as pq
        def no_space(*args, **kwargs):
            raise OSError(28, "No space left on device")
        pq.write_table = no_space"""


@pytest.mark.slow
@pytest.mark.parametrize("fault, reason", [
    (DISK_FULL, "No space left on device"),
    ("import shutil; shutil.rmtree('runs', ignore_errors=True)", "No such file or directory"),
], ids=["disk-full", "run-dir-removed"])
def test_write_failures_during_training_warn_once_and_training_goes_on(tmp_path, fault, reason):
    script = finite_script(tmp_path, fault)
    result = run_cli("profile", "-q", "--out", "runs", "--flush-every", "5", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == plain_output(script, tmp_path)
    warnings = [line for line in result.stderr.splitlines() if "cannot write" in line]
    assert len(warnings) == 1 and reason in warnings[0] and "training continues" in warnings[0]
    if "rmtree" in fault:
        assert not (tmp_path / "runs").exists()
        return
    run = only_run(tmp_path / "runs")
    assert run.meta["status"] == "finished" and run.meta["incomplete"] is True
    assert reason in run.meta["incomplete_reason"]
    assert list(run.steps["step"]) == list(range(20))  # four flushes of 5 before the disk filled


# -- concurrency ------------------------------------------------------------------------------


@pytest.mark.slow
def test_runs_started_together_into_one_root_never_mix(tmp_path):
    script = finite_script(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "gradprobe", "profile", "-q", "--out", "runs", "--flush-every",
                               "7", str(script), str(seed)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for seed in (1, 2, 3)]
    outputs = [proc.communicate(timeout=240) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
    runs = {run.meta["argv"][-1]: run for run in gradprobe.list_runs(tmp_path / "runs")}
    assert sorted(runs) == ["1", "2", "3"] and len({run.path for run in runs.values()}) == 3
    for seed, (out, _) in zip("123", outputs):
        losses = eval(out.splitlines()[0])  # the script's own list of floats
        steps = runs[seed].steps
        assert list(steps["step"]) == list(range(60))
        np.testing.assert_allclose(steps["loss"], losses, rtol=1e-6)


# -- child processes ---------------------------------------------------------------------------

CHILDREN = """
import os, sys, torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

def train(rank, model, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    print(f"child {rank} done", flush=True)

if __name__ == "__main__":
    torch.manual_seed(0)
    mode = sys.argv[1]
    model = torch.nn.Linear(4, 2)
    if mode in ("fork", "spawn"):
        data = TensorDataset(torch.randn(64, 4), torch.randn(64, 2))
        loader = DataLoader(data, batch_size=8, num_workers=2, multiprocessing_context=mode)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for epoch in range(2):
            for x, y in loader:
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                opt.step()
        print(repr(model.weight.detach().flatten().tolist()))
    elif mode == "spawned-trainers":
        mp.spawn(train, args=(model, 30), nprocs=2)
    else:  # Hogwild: forked trainers share the model with the main process, which trains too
        model.share_memory()
        children = [mp.get_context("fork").Process(target=train, args=(r, model, 60)) for r in range(2)]
        for child in children:
            child.start()
        train("main", model, 60)
        for child in children:
            child.join()
"""

CHILD_NOTICE = "only the main process is recorded, so training in child processes is not profiled"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fork", "spawn"])
def test_dataloader_workers_neither_record_nor_duplicate(tmp_path, mode):
    (tmp_path / "train.py").write_text(CHILDREN)
    result = run_cli("profile", "-q", "--out", "runs", "--flush-every", "3", "train.py", mode, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == plain_output(tmp_path / "train.py", tmp_path, mode)
    assert CHILD_NOTICE not in result.stderr and "is a child of the profiled process" not in result.stderr
    run = only_run(tmp_path / "runs")
    assert list(run.steps["step"]) == list(range(16))  # 2 epochs of 8 batches, each once
    assert sorted(run.layers["step"].unique()) == list(range(0, 16, 10))
    tables = "|".join(TABLES)  # every table's parts, from the main process (rank 0) only
    assert all(re.fullmatch(rf"({tables})-r0-\d{{6}}\.parquet", p.name) for p in (run.path / "parts").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("mode, main_steps", [("spawned-trainers", 0), ("hogwild", 60)])
def test_training_in_child_processes_is_announced_as_not_profiled(tmp_path, mode, main_steps):
    (tmp_path / "train.py").write_text(CHILDREN)
    result = run_cli("profile", "-q", "--out", "runs", "--flush-every", "7", "train.py", mode, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(line for line in result.stdout.splitlines()) == sorted(
        [f"child {r} done" for r in (0, 1)] + (["child main done"] if main_steps else []))
    assert result.stderr.count(CHILD_NOTICE) == 1
    run = only_run(tmp_path / "runs")
    assert run.meta["status"] == "finished" and not run.meta.get("incomplete")
    assert list(run.steps["step"]) == list(range(main_steps))  # the main process's own steps, once


# -- numerics ---------------------------------------------------------------------------------


class Odd(nn.Module):
    """Parameters of every awkward kind: float64, complex, zero-size, and a float32 layer."""

    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(3, 3)
        self.wide = nn.Parameter(torch.randn(3, dtype=torch.float64))
        self.phase = nn.Parameter(torch.randn(3, dtype=torch.complex64))
        self.empty = nn.Parameter(torch.zeros(0, 3))

    def forward(self, x):
        out = self.dense(x) + self.wide.float() + (self.phase * self.phase.conj()).real
        return out.sum() + self.empty.sum()


def _expected(grad: torch.Tensor) -> tuple[float, float, int]:
    values = grad.detach().cpu().numpy().astype(np.complex128).ravel()
    magnitude = np.abs(values)
    finite = np.isfinite(magnitude)
    return (float(np.sqrt(np.sum(magnitude ** 2))) if values.size else 0.0,
            float(magnitude.max()) if values.size else 0.0, int((~finite).sum()))


@pytest.mark.parametrize("fault", ["none", "all-nan", "inf"])
def test_awkward_dtypes_shapes_and_nonfinite_gradients_are_recorded(tmp_path, fault):
    torch.manual_seed(0)
    model = Odd()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    expected = []
    with gradprobe.watch(model, out=tmp_path, every=1) as rec:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(2, 3)).backward()
            if fault == "all-nan":
                for p in model.parameters():
                    p.grad.fill_(math.nan)
            elif fault == "inf":
                model.wide.grad[1] = math.inf
            expected.append({n: _expected(p.grad) for n, p in model.named_parameters()})
            opt.step()
    run = gradprobe.load_run(rec.path)
    assert run.meta["status"] == "finished" and not run.meta.get("incomplete")
    table = run.layer_table.set_index("name")
    assert table.loc["phase", "dtype"] == "complex64" and table.loc["empty", "numel"] == 0
    for step, want in enumerate(expected):
        rows = run.layers[run.layers["step"] == step].set_index("name")
        for name, (norm, maxabs, nonfinite) in want.items():
            np.testing.assert_allclose(rows.loc[name, ["norm", "maxabs"]].to_numpy(np.float64), [norm, maxabs],
                                       rtol=1e-5, equal_nan=True, err_msg=name)
            assert rows.loc[name, "nonfinite"] == nonfinite, name
        total = math.sqrt(sum(v[0] ** 2 for v in want.values()))
        np.testing.assert_allclose(run.steps["global_norm"][step], total, rtol=1e-5, equal_nan=True)
    report = run_cli("report", str(rec.path), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    if fault != "none":
        assert "nonfinite" in report.stdout


def test_a_model_without_trainable_parameters_is_explained(tmp_path):
    script = tmp_path / "frozen.py"
    script.write_text("import torch\ntorch.manual_seed(0)\nmodel = torch.nn.Linear(3, 1).requires_grad_(False)\n"
                      "with torch.no_grad():\n    print(float(model(torch.ones(1, 3)).sum()))\n")
    result = run_cli("profile", "-q", "--out", "runs", str(script), cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == plain_output(script, tmp_path)
    run = only_run(tmp_path / "runs")
    assert run.meta["status"] == "finished" and run.steps.empty and run.layer_table.empty
    report = run_cli("report", "--root", "runs", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "nothing was recorded: the script never updated trainable parameters" in report.stdout


# -- what a report says about the run's state ------------------------------------------------------


def _session_with_steps(tmp_path: Path):
    from gradprobe.recording.session import Session

    session = Session(out=tmp_path / "runs", script="train.py")
    session.add_layers([{"name": "w", "group": "w", "shape": [2], "numel": 2, "dtype": "float32", "optimizer": 0}])
    n = 5
    session.append(
        {"step": np.arange(n), "optimizer": np.zeros(n), "rank": np.zeros(n), "time": np.arange(n) + 1e9,
         "global_norm": np.ones(n), "global_norm_post": np.ones(n), "clip_scale": np.ones(n),
         "clip_threshold": np.full(n, np.nan), "loss": np.ones(n), "skipped": np.zeros(n, bool)},
        {"step": np.arange(n), "optimizer": np.zeros(n), "rank": np.zeros(n), "layer": np.zeros(n),
         "norm": np.ones(n), "maxabs": np.ones(n), "nonfinite": np.zeros(n), "param_norm": np.ones(n)},
    )
    return session


def test_a_run_being_written_and_one_whose_process_died_are_told_apart(tmp_path):
    from gradprobe.reports.markdown import render_markdown
    from gradprobe.reports.summary import build_report

    session = _session_with_steps(tmp_path)
    live = gradprobe.load_run(session.path)
    assert live.meta["pid"] == os.getpid() and not live.ended_abruptly
    assert "still being written" in render_markdown(build_report(live))

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    session.writer.update(pid=gone.pid)  # as if a process that has exited had written the run
    dead = gradprobe.load_run(session.path)
    assert dead.ended_abruptly and len(dead.steps) == 5
    assert "ended abruptly" in render_markdown(build_report(dead))

    session.close("finished", exit_code=0)
    assert gradprobe.load_run(session.path).notes == []
