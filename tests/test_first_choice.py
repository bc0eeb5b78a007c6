"""The first clip spec recommend bets on, against thresholds computed by hand from synthetic histories."""

import json

import numpy as np
import pandas as pd
import pytest

from gradprobe.analysis.findings import Finding
from gradprobe.analysis.first_choice import first_choice
from gradprobe.store.streams import Stream


def stream_of(norms) -> Stream:
    steps = pd.DataFrame({"step": np.arange(len(norms)), "global_norm": np.asarray(norms, dtype=np.float64),
                          "skipped": False})
    empty = pd.DataFrame({"step": [], "layer": [], "norm": []})
    return Stream(0, steps, np.zeros(0, dtype=np.int64), pd.DataFrame({"name": [], "numel": [], "shape": []}),
                  empty)


def test_a_healthy_history_gets_a_guard_that_never_fires():
    norms = np.exp(np.random.default_rng(0).normal(0.0, 0.2, 300)) * np.linspace(2.0, 1.0, 300)
    spec, why = first_choice(stream_of(norms), ())
    cap = float(spec.split("=")[1])
    assert cap == pytest.approx(2 * norms.max(), rel=1e-3) and "nothing to fix" in why


def test_a_jump_freezes_the_threshold_at_the_healthy_tenth_percentile():
    rng = np.random.default_rng(1)
    norms = np.exp(rng.normal(0.0, 0.1, 200))
    norms[60] = 50.0  # 50x the median: the trouble starts here
    norms[61:] *= 4.0  # and the norms stay high while the model recovers
    spec, why = first_choice(stream_of(norms), ())
    expected = float(f"{np.percentile(norms[:60], 10):.3g}")
    assert spec == f"global-norm:max={expected:g}" and "step 60" in why


def test_trouble_from_the_start_falls_back_to_the_common_default():
    norms = 3.0 ** np.arange(40)  # growing from the first step: the explosion detector's finding marks it
    explosion = Finding(kind="explosion", severity="critical", layers=[], steps=(10, 39),
                        evidence={"optimizer": 0}, advice="")
    spec, why = first_choice(stream_of(norms), [explosion])
    assert spec == "global-norm:max=1" and "from the start" in why and "10 healthy steps" in why


SELF_CLIPPING = """
import json, sys, torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
layers = []
for step in range(40):
    opt.zero_grad()
    x = torch.randn(16, 6) * (1 + step % 3)
    model(x).pow(2).mean().backward()
    layers.append([torch.linalg.vector_norm(p.grad).item() for p in model.parameters()])
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.2)
    opt.step()
json.dump(layers, open(sys.argv[1], "w"))
"""


def test_per_layer_what_if_undoes_the_scripts_own_clip(tmp_path, write_script):
    from conftest import run_cli

    import gradprobe
    from gradprobe.policies import parse_spec, replay_run

    write_script(SELF_CLIPPING)
    result = run_cli("profile", "--quiet", "--every", "1", "--out", "runs", "--name", "r", "train.py", "norms.json",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    before_clip = np.asarray(json.loads((tmp_path / "norms.json").read_text()))  # per step, per parameter
    run = gradprobe.load_run(tmp_path / "runs" / "r")
    assert (run.steps["clip_threshold"] == 0.2).all() and (run.steps["clip_scale"] < 1).mean() > 0.5
    cap = float(np.median(before_clip.max(axis=1)))
    replay = replay_run(parse_spec(f"layer-norm:max={cap}"), run)
    expected = before_clip.max(axis=1) > cap  # the candidate alone, on the gradients before the script's clip
    assert np.array_equal(replay.clipped[replay.evaluated], expected)
    assert expected.mean() not in (0.0, 1.0)
