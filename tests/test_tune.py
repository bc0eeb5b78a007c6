"""`gradprobe tune`: candidates, trial scores against losses the test records itself, and whole tunes."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from scipy import stats

import gradprobe
from conftest import run_cli
from gradprobe.errors import GradprobeError
from gradprobe.tuning import Summary, TrialScore, score_run
from gradprobe.tuning.candidates import NO_CLIPPING, derive_candidates, parse_candidates
from gradprobe.policies.global_norm import GlobalNorm
from gradprobe.policies.history import History, spec_number
from gradprobe.tuning.scoring import better_than, metric_value

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
    significant, p = better_than(bad, diverged)
    assert significant is True and math.isnan(p)  # the penalty decides; no test ran, so no p-value
    assert better_than(_summary([1.0]), _summary([2.0]))[0] is None
    # Repeats that scored exactly the same measure no noise: nothing is called significant, and no p = 0.
    significant, p = better_than(_summary([1.0, 1.0]), _summary([2.0, 2.0]))
    assert significant is None and math.isnan(p)
    assert _summary([1.0, 1.0]).identical and not _summary([1.0, 1.1]).identical


def test_the_p_value_is_welchs_one_sided_test_in_the_scores_direction():
    a, b = [1.0, 1.2, 0.9, 1.1], [1.4, 1.3, 1.8, 1.2]
    expected = stats.ttest_ind(a, b, equal_var=False, alternative="less").pvalue
    assert better_than(_summary(a), _summary(b)) == (expected < 0.05, pytest.approx(expected, rel=1e-12))
    # Higher is better (--maximize): b is the better one, by the same test the other way round.
    high_a, high_b = (Summary("c", "spec", [TrialScore("ok", v) for v in values], True) for values in (a, b))
    assert better_than(high_b, high_a)[1] == pytest.approx(expected, rel=1e-12)
    assert high_b.rank_key() < high_a.rank_key() and _summary(a).rank_key() < _summary(b).rank_key()


def test_metric_value_is_the_last_number_the_pattern_matches():
    text = "epoch 1 val_loss=0.52\nnoise val_loss=nan?\nepoch 2 val_loss=3.5e-01 acc=0.9\nval_loss=oops\n"
    assert metric_value(text, re.compile(r"val_loss=([0-9.e+-]+)")) == 0.35
    assert metric_value(text, re.compile(r"(?<=acc=)[0-9.]+")) == 0.9
    assert metric_value(text, re.compile(r"missing=([0-9.]+)")) is None


def _history(norms):
    empty = np.empty((0, 0))
    return History(np.asarray(norms, dtype=np.float64), empty, empty, empty)


def test_tune_tries_the_small_fixed_thresholds_that_would_clip():
    norms = np.linspace(0.5, 20.0, 200)
    specs = dict(GlobalNorm.tune_candidates(_history(norms)))
    percentiles = {f"global-norm p{p:g}": f"global-norm:max={spec_number(np.percentile(norms, p))}"
                   for p in (50, 90, 95, 99)}
    assert specs == {**percentiles, "global-norm 1": "global-norm:max=1", "global-norm 0.25": "global-norm:max=0.25"}
    quiet = dict(GlobalNorm.tune_candidates(_history(np.linspace(0.05, 0.6, 50))))
    assert "global-norm 0.25" in quiet and "global-norm 1" not in quiet  # 1 would never clip these


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
    # The profile (the first trial) ran past norms of 1: the fixed thresholds 1 and 0.25 are candidates too.
    profile = gradprobe.load_run(tmp_path / "tunes" / "spiky" / trials[0]["run"])
    assert trials[0]["spec"] is None and profile.steps["global_norm"].max() > 1
    derived = {c.spec for c in derive_candidates(profile)}
    assert {"global-norm:max=1", "global-norm:max=0.25", None} <= derived
    assert {t["spec"] for t in trials} == derived
    assert len(trials) == len(derived) + 3  # each candidate once, then the best two and no clipping again
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


# Seeds itself, trains on noisy data and prints a held-out loss every 10 steps.
SELF_SEEDED = """
import torch
torch.manual_seed(0)
w = torch.randn(8, 1)
x, x_val = torch.randn(512, 8), torch.randn(256, 8)
y, y_val = x @ w + 0.3 * torch.randn(512, 1), x_val @ w
model = torch.nn.Linear(8, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.05)
for step in range(40):
    idx = torch.randint(0, 512, (16,))
    loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 10 == 9:
        with torch.no_grad():
            print(f"step {step} val_loss={torch.nn.functional.mse_loss(model(x_val), y_val).item():.6f}")
"""

# No randomness at all: every seed trains the same way.
DETERMINISTIC = """
import torch
x = torch.linspace(-1, 1, 64).reshape(32, 2)
y = x.sum(1, keepdim=True)
model = torch.nn.Linear(2, 1)
with torch.no_grad():
    model.weight.fill_(0.1)
    model.bias.zero_()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(20):
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
"""


@pytest.mark.slow
def test_tune_scores_the_printed_metric_and_varies_a_self_seeded_script(tmp_path, write_script):
    script = write_script(SELF_SEEDED)
    result = run_cli("tune", "--steps", "50", "--repeats", "3", "--candidates", "none,global-norm:max=0.5",
                     "--metric", r"val_loss=([0-9.]+)", "--out", "tunes", "--name", "m", str(script),
                     cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    directory = tmp_path / "tunes" / "m"
    document = json.loads((directory / "tune.json").read_text())
    scores: dict = {}
    for trial in document["trials"]:
        printed = re.findall(r"val_loss=([0-9.]+)", (directory / trial["log"]).read_text())
        assert len(printed) == 4 and trial["score"] == float(printed[-1])
        assert trial["seconds"] > 0
        scores.setdefault(trial["spec"], []).append(trial["score"])
    assert {len(v) for v in scores.values()} == {3}
    # The script fixes torch's seed, yet the repeats differ: --seed reached its own manual_seed.
    assert all(len(set(v)) == 3 for v in scores.values())
    ranked = sorted(scores, key=lambda spec: np.mean(scores[spec]))
    best, other = ranked
    expected = stats.ttest_ind(scores[best], scores[other], equal_var=False, alternative="less").pvalue
    label = {t["spec"]: t["candidate"] for t in document["trials"]}
    assert document["p_values"][label[other]] == pytest.approx(expected, rel=1e-9)
    assert "val_loss" in result.stdout and "p = 0 " not in result.stdout


@pytest.mark.slow
def test_tune_says_so_when_repeats_with_other_seeds_are_identical(tmp_path, write_script):
    script = write_script(DETERMINISTIC)
    result = run_cli("tune", "--steps", "20", "--repeats", "2", "--candidates", "none,global-norm:max=0.05",
                     "--out", "tunes", "--name", "d", str(script), cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "tunes" / "d" / "tune.json").read_text())
    finals = {}
    for trial in document["trials"]:
        finals.setdefault(trial["spec"], []).append(final_loss(tmp_path / "tunes" / "d" / trial["run"]))
    assert all(len(v) == 2 and v[0] == v[1] for v in finals.values())
    assert all(row["identical_repeats"] for row in document["ranking"])
    assert document["p_values"] == {}
    assert "scored exactly the same" in document["verdict"] and "significant" in document["verdict"]


def test_a_budget_stops_the_running_trial_and_starts_no_other(tmp_path, write_script):
    # Twenty steps of 0.2 s: the first trial outlasts the 2 s budget.
    script = write_script(DETERMINISTIC.replace("    opt.step()", "    opt.step()\n    __import__('time').sleep(0.2)"))
    result = run_cli("tune", "--steps", "20", "--repeats", "3", "--budget", "2", "--candidates",
                     "none,global-norm:max=0.05,global-norm:max=0.5,zclip:z=2.5", "--out", "tunes", "--name", "b",
                     str(script), cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "tunes" / "b" / "tune.json").read_text())
    [trial] = document["trials"]
    assert trial["spec"] is None and trial["status"] == "failed" and trial["error"].startswith("timed out after")
    # Not started: the other three candidates, then no clipping's two repeats (the only candidate with a trial).
    assert document["skipped"] == 3 + 2
    assert "--budget of 2 s ran out: 5 planned trials were not run" in document["verdict"]


def test_maximize_without_a_metric_is_a_one_line_error(tmp_path, write_script):
    script = write_script(DETERMINISTIC)
    result = run_cli("tune", "--maximize", "--out", "tunes", str(script), cwd=tmp_path)
    assert result.returncode != 0 and "--maximize needs --metric" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "tunes").exists()


def test_the_use_it_commands_are_one_line_each_at_any_width_and_parse_back_to_the_tuned_command(tmp_path):
    import io
    import shlex

    from rich.console import Console

    from gradprobe.reports.tune_table import render_tune
    from gradprobe.tuning import TuneResult
    from gradprobe.tuning.tune import TuneConfig

    tune_dir = tmp_path / "my tunes" / "[spiky]"  # a space to quote, brackets that are not markup
    chosen = Summary("global-norm p90", "global-norm:max=0.5", [TrialScore("ok", 1.0)])
    result = TuneResult(tune_dir, ranking=[chosen], chosen=chosen, verdict="clipping helps",
                        config=TuneConfig("train.py", ["--epochs", "1"]))
    out = io.StringIO()
    render_tune(result, Console(file=out, width=40, color_system=None))
    lines = out.getvalue().splitlines()
    use = [line for line in lines if line.startswith(("use it: ", "    or: "))]
    assert [shlex.split(line.split(": ", 1)[1]) for line in use] == [
        ["gradprobe", "run", "--clip-from", str(tune_dir), "train.py", "--", "--epochs", "1"],
        ["gradprobe", "apply", "train.py", "--from", str(tune_dir)],
    ]
