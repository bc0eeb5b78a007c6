"""The live view: streaming checks on flushed steps, its rendering, and `gradprobe profile` on a terminal."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time

import numpy as np
import pytest
from rich.console import Console

from gradprobe.analysis.live_checks import LiveChecks
from gradprobe.analysis.spike import find_spikes
from gradprobe.reports.live import LiveView
from gradprobe.recording.session import Session

SPIKE_AT, NAN_AT, STEPS, FLUSH = 150, 260, 300, 37


def _flushes(norms: np.ndarray, skipped: np.ndarray | None = None, optimizer: int = 0, start_time: float = 1000.0,
             dt: float = 0.01, scale: np.ndarray | None = None, threshold: float = np.nan):
    """The ``steps`` columns of consecutive flushes of FLUSH steps, as an adapter writes them."""
    n = len(norms)
    skipped = np.zeros(n, dtype=bool) if skipped is None else skipped
    scale = np.ones(n, dtype=np.float32) if scale is None else scale
    for lo in range(0, n, FLUSH):
        hi = min(n, lo + FLUSH)
        yield {"step": np.arange(lo, hi), "time": start_time + dt * np.arange(lo, hi),
               "optimizer": np.full(hi - lo, optimizer, dtype=np.int16), "rank": np.zeros(hi - lo, dtype=np.int16),
               "global_norm": norms[lo:hi].astype(np.float32), "global_norm_post": norms[lo:hi].astype(np.float32),
               "clip_scale": scale[lo:hi], "clip_threshold": np.full(hi - lo, threshold, dtype=np.float32),
               "loss": np.full(hi - lo, np.nan, dtype=np.float32), "skipped": skipped[lo:hi]}


def _noisy(seed: int = 0) -> np.ndarray:
    return np.exp(np.random.default_rng(seed).normal(0.0, 0.1, STEPS))


def test_a_spike_is_reported_in_the_flush_that_holds_it_with_its_ratio_to_the_previous_median():
    norms = _noisy()
    norms[SPIKE_AT] *= 50
    checks = LiveChecks()
    per_flush = [checks.feed(steps) for steps in _flushes(norms)]
    holding = SPIKE_AT // FLUSH
    assert [i for i, found in enumerate(per_flush) if found] == [holding]
    (finding,) = per_flush[holding]
    expected_ratio = norms[SPIKE_AT] / np.median(norms[SPIKE_AT - 100:SPIKE_AT])
    assert finding.kind == "spike" and finding.severity == "warning" and finding.steps == (SPIKE_AT, SPIKE_AT)
    assert finding.evidence["max_ratio"] == pytest.approx(expected_ratio, rel=1e-5)
    assert f"at step {SPIKE_AT}" in finding.advice
    # The report's detector flags the same step on the whole series.
    index, _, _ = find_spikes(np.log10(norms.astype(np.float32).astype(np.float64)))
    assert list(index) == [SPIKE_AT]


def test_non_finite_steps_are_critical_when_applied_and_info_when_skipped():
    norms = _noisy()
    norms[NAN_AT:] = np.nan
    (finding,) = [f for steps in _flushes(norms) for f in LiveChecks().feed(steps)][:1]
    assert finding.kind == "nonfinite" and finding.severity == "critical" and finding.steps[0] == NAN_AT
    skipped = ~np.isfinite(norms)
    found = [f for steps in _flushes(norms, skipped) for f in LiveChecks().feed(steps)]
    assert {f.severity for f in found} == {"info"} and found[0].steps[0] == NAN_AT


def _text(view: LiveView) -> str:
    console = Console(record=True, file=io.StringIO(), width=240)
    console.print(view.render())
    return console.export_text()


def test_view_shows_progress_rate_norms_clipping_and_the_latest_finding(tmp_path):
    session = Session(out=tmp_path, name="live")
    session.optimizers.append({"index": 0, "class": "AdamW"})
    norms = _noisy()
    norms[SPIKE_AT] *= 50
    scale = np.minimum(1.0, 1.2 / norms).astype(np.float32)  # a global-norm clip at 1.2
    view = LiveView(session, Console(file=io.StringIO()))
    for steps in _flushes(norms, dt=0.02, scale=scale, threshold=1.2):
        view.update(steps, {})
    text = _text(view)
    assert f"opt 0 AdamW  step {STEPS - 1}  50.0 steps/s  norm {norms[-1]:.4g}  median {np.median(norms):.4g}" in text
    assert f"clipped {np.mean(norms > 1.2 * 1.001):.0%} of steps, last scale {scale[-1]:.4g}" in text
    assert f"latest finding: warning spike (opt 0 AdamW): global norm {norms[SPIKE_AT]:.4g} at step {SPIKE_AT}" \
        in text.replace("\n", "")


def test_an_error_in_the_view_closes_it_without_reaching_training(tmp_path, capsys):
    session = Session(out=tmp_path, name="broken")
    with LiveView(session, Console(file=io.StringIO())) as view:
        assert view.update in session.listeners
        view.update({"step": np.arange(3)}, {})  # columns missing
        assert view.update not in session.listeners
    assert "live view stopped (KeyError" in capsys.readouterr().err


TRAIN = """
import math, sys, torch
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(300):
    opt.zero_grad()
    loss = model(torch.randn(8, 4)).pow(2).mean()
    (loss * (math.nan if step == 260 else 1.0)).backward()
    opt.step()
    if step % 100 == 0:
        print(f"script line {step}", flush=True)
    if step == 150:  # a progress bar redrawn in place, on stderr
        for done in range(1, 4):
            print(f"\\rprogress {done}/3", end="\\n" if done == 3 else "", file=sys.stderr, flush=True)
print("script done")
"""

TOKENS = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]+")


def _screen(raw: str) -> list[str]:
    """The non-empty lines a terminal shows after ``raw``, emulating what rich's live display emits:
    colours (ignored), erase line, cursor up, carriage return and newline."""
    lines, row, col = [""], 0, 0
    for token in TOKENS.findall(raw):
        if token == "\n":
            row, col = row + 1, 0
            lines += [""] * (row + 1 - len(lines))
        elif token == "\r":
            col = 0
        elif token.startswith("\x1b["):
            if token.endswith("K"):
                lines[row] = ""
            elif token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
        else:
            lines[row] = lines[row][:col].ljust(col) + token + lines[row][col + len(token):]
            col += len(token)
    return [line.rstrip() for line in lines if line.strip()]


def _on_terminal(args: list[str], cwd, timeout: float = 180) -> tuple[int, list[str]]:
    """Run ``python -m gradprobe ARGS`` with stdout and stderr on a pseudo-terminal; the screen it leaves."""
    main, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": "200", "TERM": "xterm"}
    process = subprocess.Popen([sys.executable, "-m", "gradprobe", *args], cwd=cwd, stdin=subprocess.DEVNULL,
                               stdout=secondary, stderr=secondary, env=env)
    os.close(secondary)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 1.0)
        if ready:
            try:
                data = os.read(main, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    os.close(main)
    code = process.wait(timeout=30)
    return code, _screen(b"".join(chunks).decode("utf-8", "replace"))


@pytest.mark.slow
def test_profile_on_a_terminal_shows_the_live_view_below_every_script_line(tmp_path):
    (tmp_path / "train.py").write_text(TRAIN)
    code, screen = _on_terminal(["profile", "--flush-every", "50", "--name", "tty", "train.py"], tmp_path)
    assert code == 0, screen
    script = ["script line 0", "script line 100", "progress 3/3", "script line 200", "script done"]
    assert screen[:5] == script, screen
    assert screen[5] == "gradprobe recording gradprobe-runs/tty"
    assert screen[6].startswith("opt 0 SGD  step 299  ") and "steps/s  norm NaN/Inf  median" in screen[6]
    assert screen[7].startswith("latest finding: critical nonfinite (opt 0 SGD): NaN/Inf gradient norm at step 260")
    assert screen[8:] == ["gradprobe: run finished -> gradprobe-runs/tty"]


@pytest.mark.slow
def test_no_live_view_with_quiet_or_when_stderr_is_not_a_terminal(tmp_path):
    (tmp_path / "train.py").write_text(TRAIN)
    script_lines = ["script line 0", "script line 100", "script line 200", "script done"]
    code, screen = _on_terminal(["profile", "--quiet", "--flush-every", "50", "train.py"], tmp_path)
    assert code == 0 and screen == [*script_lines[:2], "progress 3/3", *script_lines[2:], screen[-1]]
    assert screen[-1].startswith("gradprobe: run finished")
    piped = subprocess.run([sys.executable, "-m", "gradprobe", "profile", "--flush-every", "50", "train.py"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert piped.returncode == 0 and "steps/s" not in piped.stderr
    assert piped.stdout.splitlines() == script_lines


PAUSED = """
import pathlib, sys, time, torch
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(12):
    opt.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    print(f"norm {step} {norm.item():.9g}", flush=True)
    opt.step()
    if step == 5:
        print("waiting", flush=True)
        deadline = time.monotonic() + 120
        while not pathlib.Path("go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
"""


def test_a_run_shows_on_disk_after_steps_1_2_and_4_while_the_script_still_trains(tmp_path):
    from gradprobe import load_run

    (tmp_path / "train.py").write_text(PAUSED)
    process = subprocess.Popen([sys.executable, "-m", "gradprobe", "profile", "--name", "early", "train.py"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        norms = {}
        for line in process.stdout:
            if line.strip() == "waiting":
                break
            _, step, value = line.split()
            norms[int(step)] = float(value)
        run = load_run(tmp_path / "gradprobe-runs" / "early")
        assert run.meta["status"] == "running"
        # Six steps taken; the flushes after the 1st, 2nd and 4th have written steps 0-3, the rest is on the device.
        assert run.steps["step"].tolist() == [0, 1, 2, 3]
        np.testing.assert_allclose(run.steps["global_norm"], [norms[s] for s in range(4)], rtol=1e-5)
        assert sorted(set(run.layers["step"])) == [0]  # per-layer figures every 10 steps: step 0
    finally:
        (tmp_path / "go").touch()
        rest, _ = process.communicate(timeout=120)
    assert process.returncode == 0
    assert load_run(tmp_path / "gradprobe-runs" / "early").steps["step"].tolist() == list(range(12))
    norms.update({int(s): float(v) for _, s, v in (line.split() for line in rest.splitlines())})
    np.testing.assert_allclose(load_run(tmp_path / "gradprobe-runs" / "early").steps["global_norm"],
                               [norms[s] for s in range(12)], rtol=1e-5)


def test_early_flushes_come_after_steps_1_2_4_8_until_the_flush_interval():
    from gradprobe.recording.session import Sampling

    powers = {2 ** k for k in range(20)}
    for flush_every in (1, 2, 5, 50, 100, 128):
        expected = [n for n in range(1, 300) if n in powers and n < flush_every]
        assert [n for n in range(0, 300) if Sampling(flush_every=flush_every).early(n)] == expected


def test_a_live_view_flushes_a_torch_loop_every_few_seconds_and_leaves_the_interval_as_it_was(tmp_path,
                                                                                            monkeypatch):
    import torch

    from gradprobe.pytorch import step_buffer
    from gradprobe.pytorch.naming import ParamNamer
    from gradprobe.recording.session import LIVE_FLUSH_SECONDS, Sampling

    clock = [0.0]
    monkeypatch.setattr(step_buffer.time, "monotonic", lambda: clock[0])
    session = Session(out=tmp_path, name="timed", sampling=Sampling(flush_every=1000, flush_seconds=30.0))
    written = []
    session.listeners.append(lambda steps, _layers: written.append(len(steps["step"])))
    model = torch.nn.Linear(3, 1)
    buffer = step_buffer.StepBuffer(session, ParamNamer({"m": model}), 0, list(model.parameters()))
    with LiveView(session, Console(file=io.StringIO())):
        assert session.flush_seconds == LIVE_FLUSH_SECONDS < 30.0
        for _ in range(200):  # a step every 0.5 s
            model(torch.randn(2, 3)).sum().backward()
            clock[0] += 0.5
            buffer.record(buffer.measure())
    # Flushed whenever more than 2 s passed: after 5 steps at most (after 1, 2, 4 ... 128 steps as well).
    assert sum(written) >= 195 and max(written) == 5 and len(written) >= 40
    assert session.flush_seconds == 30.0  # the view is closed: back to the run's own interval
    assert not session.flush_due(300, LIVE_FLUSH_SECONDS + 1) and session.flush_due(300, 31)
