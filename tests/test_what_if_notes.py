"""What the report says beside the what-if: the replay caveat, clipping already in the recorded steps,
and the scores a ``gradprobe tune --from`` the run measured."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from gradprobe.analysis.what_if_notes import REPLAY_CAVEAT
from tests.conftest import require, run_cli

require("torch")

METRIC = r"val_loss=([0-9.eE+-]+)"

REGRESSION = """
import sys
import torch
torch.manual_seed(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
model = torch.nn.Linear(8, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.05)
x, w = torch.randn(256, 8), torch.randn(8, 1)
y = x @ w + 0.1 * torch.randn(256, 1)
for step in range(40):
    idx = torch.randint(0, 256, (32,))
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
    opt.step()
with torch.no_grad():
    print(f"val_loss={torch.nn.functional.mse_loss(model(x), y).item():.6g}")
"""

SELF_CLIPPING = """
import torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
x, y = torch.randn(64, 8), 3 * torch.randn(64, 1)
for step in range(30):
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y * (1 + step % 3)).backward()
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    print(f"norm={norm.item():.9g}")
    torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
    opt.step()
"""


def _report(tmp_path, run: str, fmt: str) -> str:
    result = run_cli("report", run, "--format", fmt, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_the_report_shows_what_a_tune_of_the_run_measured_beside_the_what_if(tmp_path):
    (tmp_path / "train.py").write_text(REGRESSION)
    for name in ("p", "other"):
        profiled = run_cli("profile", "-q", "--out", "runs", "--name", name, "train.py", cwd=tmp_path)
        assert profiled.returncode == 0, profiled.stderr
    first = json.loads(run_cli("recommend", "runs/p", "--json", cwd=tmp_path).stdout)["recommendations"][0]["spec"]
    tuned = run_cli("tune", "--from", "runs/p", "--candidates", f"none,{first}", "--repeats", "2", "--metric",
                    METRIC, "--out", "runs", "--name", "t", "train.py", cwd=tmp_path, timeout=600)
    assert tuned.returncode == 0, tuned.stderr
    tune_dir = tmp_path / "runs" / "t"
    document = json.loads((tune_dir / "tune.json").read_text())
    assert document["from"] == str((tmp_path / "runs" / "p").resolve())
    printed: dict = {}  # each trial's score as the script printed it, independent of gradprobe's scoring
    for trial in document["trials"]:
        value = float(re.findall(METRIC, (tune_dir / trial["log"]).read_text())[-1])
        printed.setdefault(trial["spec"], []).append(value)
    assert {len(v) for v in printed.values()} == {2}

    report = json.loads(_report(tmp_path, "runs/p", "json"))
    assert report["what_if_notes"][0] == REPLAY_CAVEAT
    [tune] = report["tunes"]
    assert tune["path"] == str(tune_dir.resolve()) and tune["chosen"] == document["chosen"]
    scores = {row["spec"]: row for row in tune["scores"]}
    for spec, values in printed.items():
        assert scores[spec]["mean"] == pytest.approx(np.mean(values), rel=1e-9)
        assert scores[spec]["std"] == pytest.approx(np.std(values, ddof=1), rel=1e-9)
    assert any(document["verdict"] in note for note in report["what_if_notes"])

    markdown = _report(tmp_path, "runs/p", "markdown")
    assert "measured by tune" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith(f"| `{first}`"))
    tried = next(t["spec"] for t in document["trials"] if t["candidate"] == first)  # as the tune parsed it
    mean, sd = np.mean(printed[tried]), np.std(printed[tried], ddof=1)
    assert f"{mean:.4g} ± {sd:.2g} (2 seeds)" in row

    # A run the tune did not start from shows the caveat and no measured column.
    other = json.loads(_report(tmp_path, "runs/other", "json"))
    assert other["tunes"] == [] and other["what_if_notes"] == [REPLAY_CAVEAT]
    assert "measured by tune" not in _report(tmp_path, "runs/other", "markdown")


def test_the_notes_say_how_often_the_script_clipped_the_replayed_steps(tmp_path):
    (tmp_path / "train.py").write_text(SELF_CLIPPING)
    result = run_cli("profile", "-q", "--out", "runs", "--name", "c", "train.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    norms = np.array([float(v) for v in re.findall(r"norm=(\S+)", result.stdout)])
    assert len(norms) == 30 and 0 < (norms > 2.0).mean() < 1
    notes = json.loads(_report(tmp_path, "runs/c", "json"))["what_if_notes"]
    assert notes == [REPLAY_CAVEAT, f"The script clipped {(norms > 2.0).mean():.0%} of these steps itself at 2: "
                     "each spec is replayed on the norms before the script's clip, as if it replaced it."]
    assert REPLAY_CAVEAT.split(":")[0] in _report(tmp_path, "runs/c", "terminal")


def test_a_first_choice_that_clips_most_steps_says_replay_cannot_judge_it(tmp_path):
    import gradprobe
    from gradprobe.reports.summary import build_report
    from test_analysis_support import noisy, write_run

    heavy = noisy(400, 3.0, 0.35, seed=7)  # log-normal norms a third of a decade wide, then spikes
    heavy[200::25] *= 60
    write_run(tmp_path, "heavy", heavy)
    report = build_report(gradprobe.load_run(tmp_path / "heavy"))
    first = report.recommendations[0]
    assert first.strategy == "first-choice"
    threshold = float(first.spec.split("max=")[1])
    share = float(np.mean(heavy > threshold))
    assert share > 0.5
    [note] = [n for n in report.what_if_notes if n.startswith("The first choice")]
    assert note.startswith(f"The first choice {first.spec} clips {share:.0%} of these steps")
    assert "`gradprobe tune`" in note
    write_run(tmp_path, "healthy", noisy(400, 3.0, 0.05, seed=7))
    healthy = build_report(gradprobe.load_run(tmp_path / "healthy"))
    assert healthy.recommendations[0].strategy == "first-choice"
    assert not [n for n in healthy.what_if_notes if n.startswith("The first choice")]
