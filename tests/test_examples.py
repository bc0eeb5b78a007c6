"""The scenarios in examples/, end to end: profile -> report (JSON) -> recommend -> run --clip-from.

Each example is profiled in a subprocess; the report and the recommendations
are made in this process; the recommended spec is then applied by
``gradprobe run --clip-from`` to the same script with its own clipping off.
Recorded numbers are checked against what the script configured and against
numpy computations on the recorded norms.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import gradprobe
from gradprobe.analysis.task_conflict import read_tasks
from gradprobe.cli.app import app
from tests.conftest import REPO, run_cli
from tests.writeup_snippets import CLIP_HELPER

EXAMPLES = REPO / "examples"
INDEPENDENT_HOOK = Path(__file__).resolve().parent / "independent_hook"


@dataclass
class Example:
    script: str
    args: list[str]  # short training for the test
    no_clip: list[str]  # arguments that turn the script's own clipping off
    threshold: float | None  # the script's own clip threshold, recorded per step
    findings: set[str] = field(default_factory=set)  # warning/critical kinds the report must show
    optional: set[str] = field(default_factory=set)  # kinds it may show as well (borderline in short runs)
    notes: set[str] = field(default_factory=set)  # info kinds the report must show (e.g. clipping on every
    # step while the loss improves: shown, not a warning)
    report: list[str] = field(default_factory=list)  # extra `gradprobe report` options
    tensorflow: bool = False


CASES = {
    "multilabel_tf": Example("multilabel_tf.py", ["--steps", "40"], ["--clip-norm", "0"], 1.0,
                             {"clip_saturation"}, tensorflow=True),
    "multitask_torch": Example("multitask_torch.py", ["--steps", "100"], [], None,
                               {"task_imbalance", "imbalance"}, {"task_conflict"}),
    "multitask_tf": Example("multitask_tf.py", ["--steps", "50"], ["--clip-norm", "0"], 1.0,
                            {"task_imbalance", "imbalance"}, {"task_conflict"}, {"clip_saturation"},
                            tensorflow=True),
    "mnist_cnn_torch": Example("mnist_cnn_torch.py", ["--steps", "40"], ["--max-norm", "0"], 1.0),
    "mnist_cnn_keras": Example("mnist_cnn_keras.py", [], ["--clipnorm", "0"], 1.0, tensorflow=True),
    "multimodal_torch": Example("multimodal_torch.py", [], [], None, {"imbalance"},
                                report=["--group", "image=image.*", "--group", "text=text.*"]),
    "cifar_sgd_torch": Example("cifar_sgd_torch.py", ["--steps", "40"], ["--max-norm", "0"], 0.5,
                               {"clip_saturation"}),
}


def _params(names):
    return [pytest.param(name, marks=[pytest.mark.slow] + ([pytest.mark.tensorflow] if CASES[name].tensorflow
                                                            else [])) for name in names]


def invoke(*args: str) -> str:
    """Run a gradprobe command in this process; return its stdout."""
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def record(example: Example, tmp_path: Path, name: str, command: str = "profile", options: tuple = (),
           script_args: tuple = ()) -> gradprobe.Run:
    """Run ``gradprobe COMMAND`` on the example in a subprocess and open the run it recorded; a PyTorch
    example runs under the independent hook too (``tests/independent_hook``), whose record of every
    optimizer step is left in ``NAME.independent.json`` beside the run."""
    args = [command, "-q", "--out", str(tmp_path), "--name", name, *options,
            str(EXAMPLES / example.script), "--", *example.args, *script_args]
    env = {"OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    seen = tmp_path / f"{name}.independent.json"
    if not example.tensorflow:
        env.update(PYTHONPATH=str(INDEPENDENT_HOOK), INDEPENDENT_HOOK_OUT=str(seen))
    result = run_cli(*args, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    run = gradprobe.load_run(tmp_path / name)
    assert run.meta["status"] == "finished"
    return run


def independent(tmp_path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """What the independent hook saw at each optimizer step of run ``name``: the norm of the gradients
    the step was called with, and of those its update used."""
    seen = json.loads((tmp_path / f"{name}.independent.json").read_text())
    assert {s["optimizer"] for s in seen} == {0}  # one optimizer in every PyTorch example
    return np.array([s["pre"] for s in seen]), np.array([s["used"] for s in seen])


def check_clipping(steps, threshold: float) -> None:
    """Every step clipped at ``threshold``: post-clip norm = min(pre, threshold), scale = post / pre."""
    pre = steps["global_norm"].to_numpy(np.float64)
    post = steps["global_norm_post"].to_numpy(np.float64)
    np.testing.assert_allclose(steps["clip_threshold"].to_numpy(np.float64), threshold, rtol=1e-6)
    np.testing.assert_allclose(post, np.minimum(pre, threshold), rtol=2e-3)
    np.testing.assert_allclose(steps["clip_scale"].to_numpy(np.float64), np.minimum(1.0, threshold / pre),
                               rtol=2e-3)


def check_modalities(run: gradprobe.Run, finding: dict) -> None:
    """The image branch dominates the text branch: the finding's numbers, recomputed from the layer rows."""
    layers, table = run.layers, run.layer_table
    branch = table["name"].str.split(".").str[0]
    rms = {}
    for group in ("image", "text"):
        ids = table.index[branch == group]
        rows = layers[layers["layer"].isin(ids)]
        squares = (rows["norm"].astype(np.float64) ** 2).groupby(rows["step"]).sum()
        rms[group] = np.sqrt(squares / table.loc[ids, "numel"].sum())
    gap = np.log10(rms["image"] / rms["text"])
    assert finding["evidence"]["ratio_median"] == pytest.approx(10 ** np.median(gap), rel=1e-4)
    assert finding["evidence"]["fraction"] == pytest.approx(np.mean(gap >= 2))
    wide = gap.index[gap >= 2]
    assert finding["steps"] == [wide[0], wide[-1]]
    assert f"from step {wide[0]} to {wide[-1]}" in finding["advice"]
    assert finding["advice"].startswith("Group 'image'")
    assert finding["layers"] == [n for n in table["name"] if n.startswith("text.")]
    html = invoke("report", str(run.path), "--format", "html", "-o", str(run.path / "r.html"),
                  "--group", "image=image.*", "--group", "text=text.*")
    assert html == "" and "Layer groups over time" in (run.path / "r.html").read_text()


@pytest.mark.parametrize("name", _params(CASES))
def test_example_end_to_end(name: str, tmp_path: Path):
    example = CASES[name]
    run = record(example, tmp_path, "profiled")
    steps = run.steps
    pre = steps["global_norm"].to_numpy(np.float64)
    assert len(steps) >= 20 and np.isfinite(pre).all() and (pre > 0).all()
    assert np.isfinite(steps["loss"]).all()
    if example.threshold is not None:
        check_clipping(steps, example.threshold)
    if not example.tensorflow:  # the update used what the script's own clip (if any) left, as recorded
        _, used = independent(tmp_path, "profiled")
        recorded = steps["global_norm"] if example.threshold is None else steps["global_norm_post"]
        np.testing.assert_allclose(recorded.to_numpy(np.float64), used, rtol=1e-5)

    report = json.loads(invoke("report", str(run.path), "--format", "json", *example.report))
    serious = {f["kind"] for f in report["findings"] if f["severity"] != "info"}
    assert serious - example.optional == example.findings, report["findings"]
    assert example.notes <= {f["kind"] for f in report["findings"] if f["severity"] == "info"}, report["findings"]
    if name == "multimodal_torch":
        check_modalities(run, next(f for f in report["findings"] if f["kind"] == "imbalance"))

    invoke("recommend", str(run.path), "--strategy", "percentile")
    saved = json.loads((run.path / "recommendation.json").read_text())["recommendations"][0]
    assert saved["spec"].startswith("global-norm:max=")
    limit = float(saved["spec"].split("=")[1])
    if "explosion" not in serious:  # after an explosion, only the steps before it count
        assert limit == pytest.approx(float(f"{np.percentile(pre, 95):.3g}"))
    assert saved["clipped_fraction"] == pytest.approx(np.mean(limit / (pre + 1e-6) < 0.999), abs=1e-9)

    clipped = record(example, tmp_path, "clipped", "run", ("--clip-from", str(run.path)), example.no_clip)
    assert clipped.meta["clip"] == str(gradprobe.parse_spec(saved["spec"]))
    check_clipping(clipped.steps, limit)
    if not example.tensorflow:  # the policy's result, on gradients the hook read before gradprobe did
        pre, used = independent(tmp_path, "clipped")
        np.testing.assert_allclose(clipped.steps["global_norm"].to_numpy(np.float64), pre, rtol=1e-5)
        np.testing.assert_allclose(used, pre * np.minimum(1.0, limit / (pre + 1e-6)), rtol=1e-5)
        np.testing.assert_allclose(clipped.steps["global_norm_post"].to_numpy(np.float64), used, rtol=1e-5)


def _kinds(run: gradprobe.Run) -> dict[str, dict]:
    report = json.loads(invoke("report", str(run.path), "--format", "json"))
    return {f["kind"]: f for f in report["findings"]}


@pytest.mark.slow
def test_multitask_balanced_losses_clear_the_task_finding(tmp_path: Path):
    """The unscaled regression task dominates the trunk; standardising its target removes the finding."""
    example = CASES["multitask_torch"]
    dominated = record(example, tmp_path, "raw")
    finding = _kinds(dominated)["task_imbalance"]
    norms = read_tasks(dominated)
    norms = norms[norms["other"] == ""].pivot(index="step", columns="task", values="norm")
    ratio = (norms["price"] / norms["digit"]).to_numpy(np.float64)
    assert finding["evidence"]["ratio_median"] == pytest.approx(np.median(ratio), rel=1e-5)
    assert finding["advice"].startswith("Task 'price'")
    balanced = record(example, tmp_path, "balanced", script_args=("--balance",))
    assert "task_imbalance" not in _kinds(balanced)
    assert len(read_tasks(balanced)) == len(read_tasks(dominated))


BUGGY_CLIP = """\
import numpy as np
import torch
from torch import nn

""" + CLIP_HELPER + """
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(256, 8), torch.randn(256, 1)
for step in range(30):
    optimizer.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    gradient_clipping(model, max_norm=1e-3)
    optimizer.step()
"""


def test_report_reveals_a_clip_that_clips_nothing(write_script, tmp_path: Path):
    """A clip helper that hands clip_grad_norm_ an exhausted generator: the report says clipping
    is configured but saw no parameters, while the optimizer received the full gradient."""
    script = write_script(BUGGY_CLIP)
    result = run_cli("profile", "-q", "--out", str(tmp_path), "--name", "buggy", str(script), cwd=tmp_path,
                     env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    run = gradprobe.load_run(tmp_path / "buggy")
    steps = run.steps
    assert (steps["global_norm"] == 0).all() and (steps["clip_threshold"] == np.float32(1e-3)).all()
    assert (steps["global_norm_post"] > 1e-3).all()  # never clipped to the configured 1e-3
    finding = _kinds(run)["clip_saturation"]
    assert finding["severity"] == "critical"
    assert finding["evidence"]["empty_fraction"] == 1.0
    assert "saw no parameters" in finding["advice"]
    assert finding["evidence"]["median_post_norm"] == pytest.approx(steps["global_norm_post"].median(), rel=1e-5)
