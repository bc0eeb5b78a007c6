"""`gradprobe tune`: candidates, trial scores against losses the test records itself, and whole tunes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import gradprobe
from conftest import run_cli
from gradprobe.errors import GradprobeError
from gradprobe.tuning import Summary, TrialScore, score_run
from gradprobe.tuning.candidates import NO_CLIPPING, parse_candidates
from gradprobe.tuning.scoring import better_than

# Two corrupted batches blow an unclipped two-layer network up; clipped, it trains on.
SPIKY = """
import torch
x = torch.randn(512, 8)
y = x @ torch.randn(8, 1) + 0.1 * torch.randn(512, 1)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
for step in range(120):
    idx = torch.randint(0, 512, (32,))
    xb, yb = x[idx], y[idx]
    if step in (40, 70):
        xb = xb * 30.0
    loss = torch.nn.functional.mse_loss(model(xb), yb)
    opt.zero_grad()
    loss.backward()
    opt.step()
"""

# A well-conditioned regression: clipping has nothing to fix.
HEALTHY = """
import random
import torch
if random.random() < {crash_below}:
    raise RuntimeError("this seed crashes")
x = torch.randn(1024, 8)
y = x @ torch.randn(8, 1) + 0.5 * torch.randn(1024, 1)
model = torch.nn.Linear(8, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(100):
    idx = torch.randint(0, 1024, (32,))
    loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
"""


def final_loss(run_path) -> float:
    """The median loss over the last 10% of a run's steps (at least 5), read from the run."""
    loss = gradprobe.load_run(run_path).steps["loss"].to_numpy(dtype=np.float64)
    tail = loss[-max(5, math.ceil(0.1 * len(loss))):]
    return float(np.median(tail)) if np.isfinite(tail).all() else math.inf


def test_candidates_split_on_commas_only_before_a_policy_name():
    candidates = parse_candidates(["global-norm:max=1,norm=inf,zclip:z=2.5,alpha=0.9+skip:sigma=6", "none"])
    assert [c.label for c in candidates] == ["global-norm:max=1,norm=inf", "zclip:z=2.5,alpha=0.9+skip:sigma=6",
                                             NO_CLIPPING]
    assert candidates[0].spec.startswith("global-norm:max=1") and "norm=inf" in candidates[0].spec
    assert candidates[2].spec is None
    with pytest.raises(GradprobeError, match="unknown"):
        parse_candidates(["global-norm:max=1,bogus:x=1"])


def _summary(scores, status="ok"):
    return Summary("c", "spec", [TrialScore(status, s) for s in scores])


def test_significance_follows_penalty_then_welch_test():
    good, bad = _summary([1.0, 1.1, 0.9]), _summary([5.0, 5.2, 4.9])
    assert better_than(good, bad)[0] is True and better_than(bad, good)[0] is False
    noisy_a, noisy_b = _summary([1.0, 2.0, 1.5]), _summary([1.2, 2.1, 1.4])
    assert better_than(noisy_a, noisy_b)[0] is False
    diverged = _summary([0.1, 0.1, 0.1], "diverged")
    assert better_than(bad, diverged) == (True, 0.0)
    assert better_than(_summary([1.0]), _summary([2.0]))[0] is None
    assert better_than(_summary([1.0, 1.0]), _summary([2.0, 2.0])) == (True, 0.0)


@pytest.mark.parametrize("nan_from", [None, 37])
def test_trial_score_is_the_median_final_loss_of_the_run(tmp_path, nan_from):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    with gradprobe.watch(model, out=tmp_path) as rec:
        for step in range(60):
            x = torch.randn(16, 4)
            target = torch.full((16, 1), math.nan) if nan_from is not None and step >= nan_from else x.sum(1, True)
            loss = torch.nn.functional.mse_loss(model(x), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    score = score_run(gradprobe.load_run(rec.path))
    assert score.steps == 60
    if nan_from is None:
        assert score.status == "ok"
        assert score.score == pytest.approx(np.median(losses[-6:]), rel=1e-6)
    else:
        assert score.status == "diverged"


@pytest.mark.slow
def test_tune_picks_clipping_that_trains_a_spiky_script_better(tmp_path, write_script):
    script = write_script(SPIKY)
    result = run_cli("tune", "--steps", "120", "--repeats", "2", "--jobs", "2", "--out", "tunes",
                     "--name", "spiky", str(script), cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "tunes" / "spiky" / "tune.json").read_text())
    chosen = document["chosen"]
    assert chosen is not None
    trials = document["trials"]
    assert len(trials) == 7 + 3  # no clipping + six derived policies, then the best two and no clipping again
    unclipped = [final_loss(tmp_path / "tunes" / "spiky" / t["run"]) for t in trials if t["spec"] is None]
    picked = [final_loss(tmp_path / "tunes" / "spiky" / t["run"]) for t in trials if t["spec"] == chosen]
    assert len(picked) == 2 and max(picked) < min(unclipped)
    assert all(t["status"] == "diverged" for t in trials if t["spec"] is None)
    assert f"chosen: {chosen}" in result.stdout
    # The choice feeds `gradprobe run --clip-from` directly.
    applied = run_cli("run", "--clip-from", str(tmp_path / "tunes" / "spiky"), "--out", "runs", "--seed", "5",
                      str(script), cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    run = gradprobe.list_runs(tmp_path / "runs")[0]
    assert run.meta["clip"] == str(gradprobe.parse_spec(chosen)) and run.meta["seed"] == 5
    assert np.isfinite(run.steps["loss"]).all()


@pytest.mark.slow
def test_tune_says_clipping_makes_no_difference_on_a_healthy_script(tmp_path, write_script):
    script = write_script(HEALTHY.format(crash_below=0.0))
    result = run_cli("tune", "--steps", "100", "--repeats", "3", "--jobs", "2", "--out", "tunes", "--name", "ok",
                     str(script), cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "tunes" / "ok" / "tune.json").read_text())
    assert document["chosen"] is None
    assert "no significant difference" in document["verdict"]
    assert not (tmp_path / "tunes" / "ok" / "recommendation.json").exists()
    best = document["ranking"][0]
    losses = {spec: [final_loss(tmp_path / "tunes" / "ok" / t["run"]) for t in document["trials"] if t["spec"] == spec]
              for spec in (best["spec"], None)}
    assert len(losses[None]) == 3
    spread = max(np.std(v, ddof=1) for v in losses.values())
    assert abs(np.mean(losses[best["spec"]]) - np.mean(losses[None])) < 2 * spread


def test_a_crashing_trial_is_marked_failed_and_tuning_goes_on(tmp_path, write_script):
    # random.random() is 0.84 after seed 0 and 0.13 after seed 1: the repeats crash.
    script = write_script(HEALTHY.format(crash_below=0.3))
    result = run_cli("tune", "--steps", "30", "--repeats", "2", "--candidates", "none,global-norm:max=0.5",
                     "--out", "tunes", "--name", "t", str(script), cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "tunes" / "t" / "tune.json").read_text())
    by_seed = {(t["spec"], t["seed"]): t for t in document["trials"]}
    assert len(by_seed) == 4
    for spec in (None, str(gradprobe.parse_spec("global-norm:max=0.5"))):
        assert by_seed[(spec, 0)]["status"] == "ok" and by_seed[(spec, 0)]["steps"] == 30
        assert by_seed[(spec, 1)]["status"] == "failed"
        assert "this seed crashes" in by_seed[(spec, 1)]["error"]
    assert "every candidate diverged or failed" in document["verdict"]


def test_tune_progress_follows_each_running_trial_from_its_run_json(tmp_path):
    import time

    from rich.console import Console

    from gradprobe.reports.tune_progress import POLL_SECONDS, TuneProgress
    from gradprobe.tuning import Candidate, Trial

    run_path = tmp_path / "trial-00-s0"
    run_path.mkdir()
    with TuneProgress(Console(file=open(tmp_path / "progress.txt", "w"), force_terminal=True)) as progress:
        progress.planned(3)
        progress.started("trial-00-s0", Candidate("no clipping", None), 0, run_path, 120)
        (run_path / "run.json").write_text(json.dumps({"progress": {"steps": 40, "flushes": 2}}))
        time.sleep(4 * POLL_SECONDS)
        running = [t for t in progress.progress.tasks if t.description.strip().startswith("trial-00-s0")]
        assert len(running) == 1 and running[0].completed == 40 and running[0].total == 120
        progress.finished(Trial(Candidate("no clipping", None), 0, "trial-00-s0", run_path, run_path / "log", 0,
                                TrialScore("ok", 0.5, 120)))
        assert [t.description for t in progress.progress.tasks] == ["trials"]
        assert progress.progress.tasks[0].completed == 1 and progress.progress.tasks[0].total == 3
    assert "trial-00-s0 no clipping (seed 0): ok, score 0.5" in (tmp_path / "progress.txt").read_text()


TF_SCRIPT = """
import numpy as np
import tensorflow as tf
import keras

x = np.random.normal(size=(256, 8)).astype("float32")
y = (x @ np.random.normal(size=(8, 1))).astype("float32")
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(1)])
opt = keras.optimizers.SGD(0.05)

@tf.function
def step(xb, yb):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(xb) - yb))
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return loss

for i in range(60):
    idx = np.random.randint(0, 256, 32)
    step(x[idx], y[idx])
"""


@pytest.mark.slow
@pytest.mark.tensorflow
def test_tune_runs_tensorflow_trials_seeded_and_clipped(tmp_path, write_script):
    script = write_script(TF_SCRIPT)
    result = run_cli("tune", "--steps", "30", "--repeats", "1", "--candidates", "none,global-norm:max=0.5",
                     "--out", "tunes", "--name", "tf", str(script), cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "tunes" / "tf" / "tune.json").read_text())
    runs = {t["spec"]: gradprobe.load_run(tmp_path / "tunes" / "tf" / t["run"]) for t in document["trials"]}
    assert all(run.meta["framework"]["name"] == "tensorflow" and len(run.steps) == 30 for run in runs.values())
    clipped = runs[str(gradprobe.parse_spec("global-norm:max=0.5"))].steps
    expected = np.minimum(clipped["global_norm"], 0.5)
    np.testing.assert_allclose(clipped["global_norm_post"], expected, rtol=1e-4)
    # Both trials ran with seed 0: the same data and initial weights, so the same first gradient.
    first = [run.steps["global_norm"].iloc[0] for run in runs.values()]
    assert first[0] == pytest.approx(first[1], rel=1e-6)
