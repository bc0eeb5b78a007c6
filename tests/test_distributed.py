"""Distributed runs on CPU (gloo, two local processes): which ranks record, one shared run directory,
recorded norms against gradients computed here without torch.distributed, and rank divergence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import gradprobe
from gradprobe.analysis import diagnose
from gradprobe.analysis import rank_divergence
from gradprobe.store.streams import split_streams
from gradprobe.store.columns import STEP_COLUMNS, steps_columns
from gradprobe.store.shards import combine_layers, combine_steps
from gradprobe.store.writer import RunWriter
from conftest import REPO, run_cli

EXAMPLE = REPO / "examples" / "train_ddp.py"
sys.path.insert(0, str(EXAMPLE.parent))
from train_ddp import make_model, shard  # noqa: E402

LR = 0.05  # train_ddp.py's learning rate
STEPS = 4


def expected_norms(steps: int, reduce: bool, rank: int = 0, clip: float | None = None) -> list[dict[str, float]]:
    """Per-parameter gradient norms (and the global norm under ``""``) that rank ``rank`` steps with:
    the mean over both ranks' batches when ``reduce`` (what the all-reduce gives), else its own."""
    model = make_model()
    ranks = (0, 1) if reduce else (rank,)
    batches = [shard(r) for r in ranks]
    out = []
    for _ in range(steps):
        grads = [torch.zeros_like(p) for p in model.parameters()]
        for x, y in batches:
            model.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            for g, p in zip(grads, model.parameters()):
                g += p.grad / len(batches)
        norms = {name: float(torch.linalg.vector_norm(g)) for (name, _), g in zip(model.named_parameters(), grads)}
        norms[""] = float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])))
        out.append(norms)
        scale = min(1.0, clip / (norms[""] + 1e-6)) if clip is not None else 1.0
        with torch.no_grad():
            for g, p in zip(grads, model.parameters()):
                p -= LR * scale * g
    return out


def recorded_norms(run: gradprobe.store.Run, rank: int) -> list[dict[str, float]]:
    steps = run.steps[run.steps["rank"] == rank].sort_values("step")
    layers = run.layers[run.layers["rank"] == rank]
    out = []
    for step, norm in zip(steps["step"], steps["global_norm"]):
        rows = layers[layers["step"] == step]
        out.append({**{str(n): float(v) for n, v in zip(rows["name"], rows["norm"])}, "": float(norm)})
    return out


def assert_norms_match(recorded: list[dict[str, float]], expected: list[dict[str, float]]) -> None:
    assert len(recorded) == len(expected)
    for got, want in zip(recorded, expected):
        assert got.keys() == want.keys()
        for name in want:
            assert got[name] == pytest.approx(want[name], rel=1e-4, abs=1e-7), name


def only_run(root: Path) -> gradprobe.store.Run:
    runs = [p for p in root.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs  # every rank wrote into one directory, no stray ones
    return gradprobe.load_run(runs[0])


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "gradprobe", *args], cwd=cwd, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_nproc_per_node_records_rank_zero_with_the_reduced_gradient(tmp_path):
    result = run_cli("profile", "--nproc-per-node", "2", "--every", "1", "--out", "runs", str(EXAMPLE),
                     "--", "--steps", str(STEPS), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("final loss") == 1  # the script's own output, from rank 0
    run = only_run(tmp_path / "runs")
    assert run.meta["status"] == "finished"
    assert run.meta["world"]["world_size"] == 2
    assert {p.name.split("-")[1] for p in (run.path / "parts").iterdir()} == {"r0"}  # rank 1 writes nothing
    assert_norms_match(recorded_norms(run, 0), expected_norms(STEPS, reduce=True))


@pytest.mark.slow
def test_clipping_applies_on_every_rank(tmp_path):
    """Rank 1 does not record but must clip too, or the replicas drift and rank 0's later
    reduced gradients no longer match the single-process reference."""
    result = run_cli("run", "--clip", "global-norm:max=0.5", "--nproc-per-node", "2", "--every", "1",
                     "--out", "runs", str(EXAMPLE), "--", "--steps", str(STEPS), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = only_run(tmp_path / "runs")
    assert_norms_match(recorded_norms(run, 0), expected_norms(STEPS, reduce=True, clip=0.5))
    assert (run.steps["global_norm_post"] <= 0.5 * (1 + 1e-5)).all()
    assert (run.steps["global_norm"] > 0.5).all()  # the test would not tell clipping apart otherwise


@pytest.mark.slow
def test_torchrun_all_ranks_agree_under_ddp(tmp_path):
    result = torchrun("profile", "--all-ranks", "--every", "1", "--out", "runs", str(EXAMPLE),
                      "--steps", str(STEPS), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = only_run(tmp_path / "runs")
    reference = expected_norms(STEPS, reduce=True)
    for rank in (0, 1):
        assert_norms_match(recorded_norms(run, rank), reference)
    assert not [f for f in diagnose(run) if f.kind == "rank_divergence"]


@pytest.mark.slow
def test_torchrun_all_ranks_reports_divergent_ranks(tmp_path):
    result = torchrun("profile", "--all-ranks", "--every", "1", "--out", "runs", str(EXAMPLE),
                      "--steps", str(STEPS), "--diverge", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = only_run(tmp_path / "runs")
    for rank in (0, 1):
        assert_norms_match(recorded_norms(run, rank), expected_norms(STEPS, reduce=False, rank=rank))
    report = run_cli("report", str(run.path), "--format", "json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    found = [f for f in json.loads(report.stdout)["findings"] if f["kind"] == "rank_divergence"]
    assert len(found) == 1
    assert found[0]["severity"] == "critical"
    assert found[0]["evidence"]["diverging_steps"] == STEPS
    assert sorted(found[0]["layers"]) == sorted(name for name, _ in make_model().named_parameters())


@pytest.mark.slow
def test_fsdp_shards_combine_into_the_unsharded_norms(tmp_path):
    result = run_cli("profile", "--nproc-per-node", "2", "--every", "1", "--out", "runs", str(EXAMPLE),
                     "--", "--steps", str(STEPS), "--fsdp", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = only_run(tmp_path / "runs")
    assert run.meta["world"]["sharded"] is True
    assert {p.name.split("-")[1] for p in (run.path / "parts").iterdir()} == {"r0", "r1"}  # each rank its shard
    assert set(run.steps["rank"]) == {0}  # one row per step, the ranks' shards combined
    assert_norms_match(recorded_norms(run, 0), expected_norms(STEPS, reduce=True))
    reference = make_model()
    first = run.layers[run.layers["step"] == 0]
    for name, param in reference.named_parameters():  # parameter norms before the first update
        assert float(first.loc[first["name"] == name, "param_norm"].iloc[0]) == pytest.approx(
            float(torch.linalg.vector_norm(param.detach())), rel=1e-5)


@pytest.mark.slow
def test_fsdp_clipping_uses_the_global_norm_across_ranks(tmp_path):
    result = run_cli("run", "--clip", "global-norm:max=0.5", "--nproc-per-node", "2", "--every", "1",
                     "--out", "runs", str(EXAMPLE), "--", "--steps", str(STEPS), "--fsdp", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = only_run(tmp_path / "runs")
    assert_norms_match(recorded_norms(run, 0), expected_norms(STEPS, reduce=True, clip=0.5))
    post = run.steps["global_norm_post"].to_numpy()
    assert post == pytest.approx(np.full(STEPS, 0.5), rel=1e-4)


def test_nproc_per_node_inside_a_launch_is_an_error(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print('ran')\n")
    result = run_cli("profile", "--nproc-per-node", "2", str(script), cwd=tmp_path, env={"WORLD_SIZE": "2"})
    assert result.returncode == 2
    assert "gradprobe: error: --nproc-per-node" in result.stderr
    assert "ran" not in result.stdout


def _write_ranks(path: Path, norms_by_rank: dict[int, list[float]], all_ranks: bool = True) -> gradprobe.store.Run:
    """A run directory whose ranks recorded the given global norms, one step each."""
    meta = {"status": "finished", "layers": [], "optimizers": [{"index": 0}],
            "world": {"rank": 0, "world_size": len(norms_by_rank), "all_ranks": all_ranks}}
    path.mkdir()
    for rank, norms in norms_by_rank.items():
        rows = np.zeros((len(norms), len(STEP_COLUMNS)), dtype=np.float32)
        rows[:, 0] = rows[:, 1] = norms
        writer = RunWriter(path, meta, rank=rank)
        writer.append("steps", steps_columns(np.arange(len(norms)), np.zeros(len(norms)), rows, 0, rank))
    return gradprobe.load_run(path)


@pytest.mark.parametrize(
    ("other", "diverging", "severity"),
    [
        ([1.0, 2.0, 3.0, 4.0], 0, None),
        ([1.0, 2.0 * (1 + 1e-5), 3.0, 4.0], 0, None),  # rounding, not divergence
        ([1.0, 2.0, 3.1, 4.0], 1, "warning"),
        ([1.0, float("nan"), 3.0, 4.5], 2, "critical"),
    ],
)
def test_rank_divergence_threshold(tmp_path, other, diverging, severity):
    run = _write_ranks(tmp_path / "run", {0: [1.0, 2.0, 3.0, 4.0], 1: other})
    (stream,) = split_streams(run)
    found = rank_divergence.detect(stream)
    if severity is None:
        assert found == []
        return
    (finding,) = found
    assert finding.severity == severity
    assert finding.evidence["diverging_steps"] == diverging
    assert finding.evidence["compared_steps"] == 4
    bad = [i for i, (a, b) in enumerate(zip([1.0, 2.0, 3.0, 4.0], other)) if not abs(a - b) <= 1e-3 * max(a, b)]
    assert finding.steps == (bad[0], bad[-1])


def test_ranks_are_compared_only_in_runs_recorded_with_all_ranks(tmp_path):
    run = _write_ranks(tmp_path / "run", {0: [1.0, 2.0], 1: [5.0, 6.0]}, all_ranks=False)
    (stream,) = split_streams(run)
    assert stream.all_ranks is None
    assert rank_divergence.detect(stream) == []


def test_single_rank_runs_have_no_rank_streams(tmp_path):
    run = _write_ranks(tmp_path / "run", {0: [1.0, 2.0]})
    (stream,) = split_streams(run)
    assert stream.all_ranks is None
    assert rank_divergence.detect(stream) == []


def test_shard_rows_combine_by_sum_of_squares_and_replicated_rows_count_once():
    meta = {"world": {"sharded": True}, "layers": [{"id": 0, "sharded": True}, {"id": 1}]}
    shards = [np.array([3.0, 4.0, np.nan]), np.array([0.5, -12.0])]  # layer 0 split over ranks 0 and 1
    replicated = np.array([2.0, 1.0])
    layers = pd.DataFrame({
        "step": np.zeros(4, dtype=np.int64), "optimizer": np.zeros(4, dtype=np.int16),
        "rank": np.array([0, 1, 0, 1], dtype=np.int16), "layer": np.array([0, 0, 1, 1], dtype=np.int32),
        "nonfinite": np.array([1, 0, 0, 0], dtype=np.int64),
        "norm": np.array([np.linalg.norm(shards[0][:2]), np.linalg.norm(shards[1]),
                          np.linalg.norm(replicated), np.linalg.norm(replicated)], dtype=np.float32),
        "maxabs": np.array([np.nan, 12.0, 2.0, 2.0], dtype=np.float32),
        "param_norm": np.array([1.0, 1.0, 5.0, 5.0], dtype=np.float32),
    })
    out = combine_layers(layers, meta).set_index("layer")
    assert len(out) == 2
    full = np.concatenate([shards[0][:2], shards[1]])
    assert out.loc[0, "norm"] == pytest.approx(np.linalg.norm(full), rel=1e-6)
    assert np.isnan(out.loc[0, "maxabs"])
    assert out.loc[0, "nonfinite"] == 1
    assert out.loc[0, "param_norm"] == pytest.approx(np.sqrt(2.0), rel=1e-6)
    assert out.loc[1, "norm"] == pytest.approx(np.linalg.norm(replicated), rel=1e-6)
    assert out.loc[1, "param_norm"] == 5.0
    steps = pd.DataFrame({"step": [0, 0], "time": [1.0, 2.0], "global_norm": np.float32([3.0, 4.0]),
                          "global_norm_post": np.float32([0.6, 0.8]), "clip_scale": np.float32([0.2, 0.2]),
                          "optimizer": np.int16([0, 0]), "rank": np.int16([1, 0])})
    combined = combine_steps(steps, meta)
    assert len(combined) == 1
    assert combined.loc[0, "global_norm"] == pytest.approx(5.0)
    assert combined.loc[0, "global_norm_post"] == pytest.approx(1.0)
    assert combined.loc[0, "time"] == 2.0  # the lowest rank's row
    assert combine_steps(steps, {"world": {"world_size": 2}}) is steps  # not sharded: left alone
