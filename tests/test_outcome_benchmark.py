"""The outcome benchmark's plumbing (``benchmarks/outcomes/run.py``) on one tiny task with two seeds:
metrics read from the trainings, the advice taken from recommend and tune, the summary numbers."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math

import numpy as np
import pytest
from scipy import stats

from gradprobe.policies import parse_spec
from gradprobe.recording.reseeding import mixed_seed
from tests.conftest import REPO, require

torch = require("torch")

TINY = '''"""A tiny regression with one corrupted batch."""
import torch
torch.manual_seed(0)
x, w = torch.randn(128, 4), torch.randn(4, 1)
y = x @ w
model = torch.nn.Linear(4, 1)
opt = torch.optim.Adam(model.parameters(), lr=0.05)
for step in range(30):
    idx = torch.randint(0, 128, (16,))
    target = y[idx] * (50.0 if step == 12 else 1.0)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x[idx]), target).backward()
    opt.step()
with torch.no_grad():
    print(f"val_metric={torch.nn.functional.mse_loss(model(x), y).item():.9g}")
'''


def _benchmark():
    spec = importlib.util.spec_from_file_location("outcomes_run", REPO / "benchmarks" / "outcomes" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _unclipped_metric(seed: int) -> float:
    """The tiny task trained in this process, seeded as ``--seed`` reseeds the script's own seed."""
    seed_torch = torch.manual_seed
    out = io.StringIO()
    try:
        torch.manual_seed = lambda value: seed_torch(mixed_seed(value, seed))
        with contextlib.redirect_stdout(out):
            exec(compile(TINY, "tiny.py", "exec"), {"__name__": "__main__"})
    finally:
        torch.manual_seed = seed_torch
    return float(out.getvalue().split("=")[1])


@pytest.mark.slow
@pytest.mark.timeout(900)  # some thirty short trainings
def test_the_outcome_benchmark_trains_every_policy_and_summarises_it(tmp_path):
    benchmark = _benchmark()
    script = tmp_path / "tiny.py"
    script.write_text(TINY)
    work = tmp_path / "work"
    work.mkdir()
    result = benchmark.run_task(script, [1, 2], work, candidates="none,global-norm:max=1")

    recommended = json.loads((work / "profile" / "p" / "recommendation.json").read_text())["recommendations"]
    tuned = json.loads((work / "tune" / "t" / "tune.json").read_text())
    assert result["recommend"] == recommended[0]["spec"] and result["tune"] == tuned["chosen"]
    assert {trial["spec"] for trial in tuned["trials"]} == {None, str(parse_spec("global-norm:max=1"))}
    assert tuned["metric"] == benchmark.METRIC.pattern
    rows = result["policies"]
    assert set(rows) == {*benchmark.REFERENCES, "recommend", "tune"}
    assert rows["no clipping"]["values"] == pytest.approx([_unclipped_metric(1), _unclipped_metric(2)], rel=1e-6)
    for name, row in rows.items():
        assert len(row["values"]) == 2 and all(math.isfinite(v) and v >= 0 for v in row["values"]), name
        assert row["mean"] == pytest.approx(np.mean(row["values"]))
        assert row["sd"] == pytest.approx(np.std(row["values"], ddof=1))
    best = min(benchmark.REFERENCES, key=lambda name: np.mean(rows[name]["values"]))
    assert result["best_reference"] == best
    for name, row in rows.items():
        assert row["ratio"] == pytest.approx(np.mean(row["values"]) / np.mean(rows[best]["values"]))
        worse = np.mean(row["values"]) > np.mean(rows[best]["values"]) and stats.ttest_ind(
            row["values"], rows[best]["values"], equal_var=False, alternative="greater").pvalue < benchmark.ALPHA
        assert row["within_noise_of_best"] is (not worse), name
    table = benchmark.table([result])
    assert table.splitlines()[2].startswith("| tiny |") and f"recommend `{result['recommend']}`" in table
