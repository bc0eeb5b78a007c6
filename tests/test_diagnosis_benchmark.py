"""The pathology benchmark's plumbing and scoring, on a fast subset of its labelled scripts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from gradprobe.store.sample_ranges import parse_ranges
from tests.conftest import require, run_cli

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("diagnosis_run", REPO / "benchmarks" / "diagnosis" / "run.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def finding(kind, severity, layers=(), steps=(0, 9)):
    return {"kind": kind, "severity": severity, "layers": list(layers), "steps": list(steps)}


def test_every_labelled_script_exists_and_labels_are_well_formed():
    cases = bench.load_labels()
    scripts = {p.name for p in bench.SCRIPTS.glob("*.py") if not p.name.startswith("_")}
    assert {c["script"] for c in cases} == scripts
    healthy = [c for c in cases if not c.get("expect")]
    assert len(cases) >= 25 and len(healthy) >= 10
    for case in cases:
        for label in case.get("expect", []):
            assert label["min_severity"] in bench.SEVERITIES
            lo, hi = label.get("first_step", (0, 0))
            assert 0 <= lo <= hi


def test_judge_checks_severity_layers_and_first_step():
    case = {"script": "x.py", "expect": [{"kind": "nonfinite", "min_severity": "critical", "layers": ["fc.weight"],
                                          "first_step": [37, 37]}]}
    exact = bench.judge(case, [finding("nonfinite", "critical", ["fc.bias", "fc.weight"], (37, 79))])
    (e,) = exact["expected"]
    assert (e["found"], e["layers_ok"], e["step_ok"], e["first_step"]) == (True, True, True, 37)
    late = bench.judge(case, [finding("nonfinite", "critical", ["fc.bias"], (38, 79))])["expected"][0]
    assert (late["found"], late["layers_ok"], late["step_ok"]) == (True, False, False)
    mild = bench.judge(case, [finding("nonfinite", "warning", ["fc.weight"], (37, 79))])["expected"][0]
    assert mild["found"] is False


def test_judge_checks_labelled_evidence():
    case = {"script": "x.py", "expect": [{"kind": "nonfinite", "min_severity": "critical",
                                          "evidence": {"first_loss_nonfinite_step": None}}]}
    backward = finding("nonfinite", "critical") | {"evidence": {"first_loss_nonfinite_step": None}}
    data = finding("nonfinite", "critical") | {"evidence": {"first_loss_nonfinite_step": 37}}
    assert bench.judge(case, [backward])["expected"][0]["evidence_ok"] is True
    assert bench.judge(case, [data])["expected"][0]["evidence_ok"] is False
    summary = bench.score([bench.judge(case, [backward]), bench.judge(case, [data])])
    assert summary["evidence_accuracy"] == 0.5


def test_score_counts_recall_precision_and_false_alarms():
    labelled = {"script": "p.py", "expect": [{"kind": "spike", "min_severity": "warning"}]}
    results = [
        bench.judge(labelled, [finding("spike", "warning"), finding("vanishing", "warning")]),
        bench.judge({"script": "q.py", "expect": [{"kind": "spike", "min_severity": "critical"}]},
                    [finding("spike", "warning")]),
        bench.judge({"script": "h.py"}, [finding("spike", "critical"), finding("explosion", "info")]),
        bench.judge({"script": "g.py"}, [finding("explosion", "info")]),
    ]
    summary = bench.score(results)
    # spike: 2 labelled, 1 found at its severity; 3 spike alarms, of which the two in labelled cases are true
    assert summary["per_kind"]["spike"] == {"labelled": 2, "found": 1, "recall": 0.5, "alarms": 3,
                                            "precision": pytest.approx(2 / 3)}
    assert summary["per_kind"]["vanishing"]["precision"] == 0.0
    assert "explosion" not in summary["per_kind"]  # info findings are no alarms
    assert (summary["healthy_controls"], summary["healthy_with_false_alarm"]) == (2, 1)
    assert summary["recall"] == 0.5
    rows, cols, table = bench.confusion(results)
    assert table[rows.index("healthy")][cols.index("spike")] == 1
    assert table[rows.index("healthy")][cols.index("none")] == 1
    assert table[rows.index("spike")][cols.index("vanishing")] == 1


@pytest.mark.slow
def test_fast_subset_runs_end_to_end(tmp_path):
    subset = ["nan_batch.py", "clip_after_step.py", "healthy_finetune_frozen_backbone.py",
              "accumulation_divided_twice.py", "lr_wrecks_weights.py"]
    cases = [c for c in bench.load_labels() if c["script"] in subset]
    results = bench.run_cases(cases, tmp_path, progress=lambda *a, **k: None)
    by_script = {r["script"]: r for r in results}
    assert all(r["exit_code"] == 0 for r in results)
    (nan,) = by_script["nan_batch.py"]["expected"]
    assert nan["found"] and nan["first_step"] == 37 and nan["severity"] == "critical"
    assert nan["evidence"] == {"first_loss_nonfinite_step": 37} and nan["evidence_ok"]  # NaN from the data
    (clip,) = by_script["clip_after_step.py"]["expected"]
    assert clip["found"] and clip["first_step"] == 0
    assert by_script["healthy_finetune_frozen_backbone.py"]["alarms"] == []
    summary = bench.score(results)
    assert summary["recall"] == 1.0 and summary["healthy_with_false_alarm"] == 0
    json.dumps(summary, allow_nan=False)


@pytest.mark.slow
def test_label_noise_spikes_name_batches_that_hold_a_corrupt_target(tmp_path):
    torch = require("torch")
    corrupt = set(torch.randperm(2048, generator=torch.Generator().manual_seed(1))[:20].tolist())  # as the script
    run_dir, _, code, stderr = bench.profile(bench.SCRIPTS / "label_noise.py", tmp_path, "noise")
    assert code == 0, stderr
    report = run_cli("report", str(run_dir), "--format", "json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    (spike,) = [f for f in json.loads(report.stdout)["findings"] if f["kind"] == "spike"]
    assert spike["severity"] == "warning" and spike["steps"][0] <= 60
    named = {batch["step"]: set(parse_ranges(batch["samples"])) for batch in spike["batches"]}
    assert set(named) <= set(spike["evidence"]["spike_steps"]) and len(named) >= 3
    assert all(batch["loader"] == "train_loader" and len(samples) == 32 for batch, samples
               in zip(spike["batches"], named.values()))
    assert all(samples & corrupt for samples in named.values()), {s: sorted(v & corrupt) for s, v in named.items()}
