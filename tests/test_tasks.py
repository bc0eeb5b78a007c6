"""gradprobe.task_gradients: per-task gradient norms and cosines on shared parameters, and their findings."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import gradprobe
from gradprobe.analysis import diagnose
from gradprobe.analysis import task_conflict
from gradprobe.analysis.task_conflict import read_tasks, task_cosines, task_norms
from conftest import require


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 8))
        self.heads = nn.ModuleList([nn.Linear(8, 1) for _ in range(3)])

    def forward(self, x):
        z = self.trunk(x)
        return [head(z).squeeze(1) for head in self.heads]


def task_losses(model, x, targets):
    return {f"t{i}": nn.functional.mse_loss(out, y * (i + 1)) for i, (out, y) in enumerate(zip(model(x), targets))}


def reference(model, losses):
    """Each task's gradient on the trunk by its own backward pass: norms and pairwise cosines."""
    vectors = {}
    for name, loss in losses.items():
        model.zero_grad()
        loss.backward(retain_graph=True)
        vectors[name] = torch.cat([p.grad.reshape(-1) for p in model.trunk.parameters()]).clone()
    model.zero_grad()
    norms = {name: torch.linalg.vector_norm(v).item() for name, v in vectors.items()}
    cosines = {(a, b): nn.functional.cosine_similarity(vectors[a], vectors[b], dim=0).item()
               for a, b in itertools.combinations(vectors, 2)}
    return norms, cosines


def test_recorded_norms_and_cosines_match_separate_backward_passes(tmp_path):
    torch.manual_seed(0)
    model = TwoHeads()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, targets = torch.randn(32, 6), [torch.randn(32) for _ in range(3)]
    expected, returned = {}, {}
    with gradprobe.watch(model, out=tmp_path, name="tasks", every=1) as rec:
        for step in range(9):
            losses = task_losses(model, x, targets)
            before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
            result = gradprobe.task_gradients(losses, shared=model.trunk, every=3)
            assert (result is None) == (step % 3 != 0)
            for p, grad in zip(model.parameters(), before):  # .grad untouched
                assert (p.grad is None) if grad is None else torch.equal(p.grad, grad)
            if result is not None:
                returned[step] = result
                expected[step] = reference(model, losses)
            optimizer.zero_grad()
            sum(losses.values()).backward()  # the graph is still there for the script
            optimizer.step()
    tasks = read_tasks(gradprobe.load_run(rec.path))
    norms, cosines = task_norms(tasks), task_cosines(tasks)
    assert list(norms.index) == [0, 3, 6] and list(cosines.index) == [0, 3, 6]
    for step, (ref_norms, ref_cosines) in expected.items():
        assert returned[step].step == step
        for name, value in ref_norms.items():
            assert returned[step].norms[name] == pytest.approx(value, rel=1e-5)
            assert norms.loc[step, name] == pytest.approx(value, rel=1e-5)
        for (a, b), value in ref_cosines.items():
            assert returned[step].cosines[(a, b)] == pytest.approx(value, abs=1e-5)
            assert cosines.loc[step, f"{a}/{b}"] == pytest.approx(value, abs=1e-5)
    steps = gradprobe.load_run(rec.path).steps
    assert len(steps) == 9 and np.isfinite(steps["global_norm"]).all()


def test_opposed_tasks_are_a_critical_conflict(tmp_path):
    torch.manual_seed(1)
    trunk, head = nn.Linear(4, 4), nn.Linear(4, 1)
    optimizer = torch.optim.SGD([*trunk.parameters(), *head.parameters()], lr=0.01)
    with gradprobe.watch([trunk, head], out=tmp_path, name="opposed") as rec:
        for _ in range(12):
            out = head(trunk(torch.randn(16, 4))).mean()
            losses = {"up": out, "down": -2 * out}
            gradprobe.task_gradients(losses, shared=trunk, every=2)
            optimizer.zero_grad()
            (losses["up"] + losses["down"]).backward()
            optimizer.step()
    run = gradprobe.load_run(rec.path)
    cosines = task_cosines(read_tasks(run))["up/down"].to_numpy()
    np.testing.assert_allclose(cosines, -1.0, atol=1e-5)
    findings = diagnose(run)
    finding = next(f for f in findings if f.kind == "task_conflict")
    assert finding.severity == "critical" and finding.steps == (0, 10)
    assert finding.evidence["conflict_fraction"] == 1.0
    assert finding.evidence["cosine_median"] == pytest.approx(np.median(cosines))
    assert "'up' and 'down'" in finding.advice and "PCGrad" in finding.advice
    assert not any(f.kind == "task_imbalance" for f in findings)  # norms 2x apart: no dominance


def _frame(norms: dict[str, list[float]], cosine: list[float]) -> pd.DataFrame:
    rows, names = [], list(norms)
    for step in range(len(cosine)):
        for name in names:
            rows.append((step * 10, 0, 0, 0.0, name, "", norms[name][step], np.nan))
        rows.append((step * 10, 0, 0, 0.0, names[0], names[1], np.nan, cosine[step]))
    return pd.DataFrame(rows, columns=["step", "optimizer", "rank", "time", "task", "other", "norm", "cosine"])


def test_dominance_thresholds():
    rng = np.random.default_rng(0)
    weak = list(rng.uniform(0.5, 1.5, 10))
    ratios = [30, 30, 30, 30, 30, 30, 2, 2, 2, 2]  # 60% of the samples at 30x
    tasks = _frame({"a": [w * r for w, r in zip(weak, ratios)], "b": weak}, [0.2] * 10)
    [finding] = task_conflict.detect(tasks)
    assert finding.kind == "task_imbalance" and finding.severity == "warning"
    assert finding.steps == (0, 50)
    assert finding.evidence["ratio_median"] == pytest.approx(np.median(ratios))
    assert finding.evidence["fraction"] == pytest.approx(0.6)
    assert finding.evidence["norm:a"] == pytest.approx(np.median([w * r for w, r in zip(weak, ratios)]))
    below = _frame({"a": [w * r for w, r in zip(weak, ratios[:4] + [2] * 6)], "b": weak}, [0.2] * 10)
    assert task_conflict.detect(below) == []  # 40% dominated: under the 50% bar
    near_orthogonal = _frame({"a": weak, "b": weak}, list(rng.uniform(-0.09, 0.09, 10)))
    assert task_conflict.detect(near_orthogonal) == []


def test_without_a_recording_the_numbers_are_returned_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trunk = nn.Linear(3, 3)
    out = trunk(torch.randn(5, 3))
    result = gradprobe.task_gradients({"a": out.sum(), "b": out.pow(2).sum()}, shared=list(trunk.parameters()))
    assert set(result.norms) == {"a", "b"} and np.isfinite(result.cosines[("a", "b")])
    assert not (tmp_path / "gradprobe-runs").exists()


@pytest.mark.parametrize("call, message", [
    (lambda t, l: gradprobe.task_gradients({"a": l}, shared=t), "at least two tasks"),
    (lambda t, l: gradprobe.task_gradients([l, l], shared=t), "at least two tasks"),
    (lambda t, l: gradprobe.task_gradients({"a/b": l, "c": l}, shared=t), "without '/'"),
    (lambda t, l: gradprobe.task_gradients({"a": 1.0, "b": 2.0}, shared=t), "scalar tensors, not float"),
    (lambda t, l: gradprobe.task_gradients({"a": l, "b": l.detach()}, shared=t), "does not require grad"),
    (lambda t, l: gradprobe.task_gradients({"a": l, "b": l * torch.ones(2)}, shared=t), "scalar tensor"),
    (lambda t, l: gradprobe.task_gradients({"a": l, "b": l}, shared=t, every=0), "positive integer"),
    (lambda t, l: gradprobe.task_gradients({"a": l, "b": l}, shared=t, tape=object()), "tape is for TensorFlow"),
    (lambda t, l: gradprobe.task_gradients({"a": l, "b": l}, shared=3), "torch.nn.Module"),
    (lambda t, l: gradprobe.task_gradients({"a": l, "b": l}, shared=nn.ReLU()), "no parameter"),
])
def test_bad_input_is_a_one_line_error(call, message):
    trunk = nn.Linear(2, 2)
    loss = trunk(torch.ones(1, 2)).sum()
    with pytest.raises(gradprobe.GradprobeError, match=message):
        call(trunk, loss)


def test_a_failure_while_measuring_does_not_stop_training(tmp_path, capsys):
    trunk = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(trunk.parameters(), lr=0.1)
    with gradprobe.watch(trunk, out=tmp_path, name="freed") as rec:
        loss = trunk(torch.ones(1, 2)).sum()
        loss.backward()  # the graph is freed: measuring fails, training goes on
        assert gradprobe.task_gradients({"a": loss, "b": 2 * loss}, shared=trunk) is None
        optimizer.step()
    assert "task_gradients failed" in capsys.readouterr().err
    assert len(gradprobe.load_run(rec.path).steps) == 1


@pytest.mark.slow
@pytest.mark.tensorflow
def test_tensorflow_norms_and_cosines_match_separate_tapes(tmp_path):
    tf = require("tensorflow")
    keras = require("keras")
    keras.utils.set_random_seed(0)
    trunk = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="tanh")])
    heads = [keras.layers.Dense(1) for _ in range(2)]
    inputs = keras.Input((5,))
    model = keras.Model(inputs, [head(trunk(inputs)) for head in heads])
    optimizer = keras.optimizers.SGD(0.05)
    x, ys = tf.random.normal((16, 5)), [tf.random.normal((16, 1)), 3 * tf.random.normal((16, 1))]

    def losses():
        outs = model(x)
        return {f"t{i}": tf.reduce_mean(tf.square(out - y)) for i, (out, y) in enumerate(zip(outs, ys))}

    returned, expected = {}, {}
    with gradprobe.watch(model, out=tmp_path, name="tf") as rec:
        for step in range(4):
            with tf.GradientTape(persistent=True) as tape:
                task = losses()
                total = task["t0"] + task["t1"]
            result = gradprobe.task_gradients(task, shared=trunk, tape=tape, every=2)
            if result is not None:
                vectors = {}
                for name in task:
                    with tf.GradientTape() as own:
                        value = losses()[name]
                    grads = own.gradient(value, trunk.trainable_variables)
                    vectors[name] = np.concatenate([g.numpy().ravel() for g in grads])
                returned[step], expected[step] = result, vectors
            grads = tape.gradient(total, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
        with tf.GradientTape() as plain:
            task = losses()
        with pytest.raises(gradprobe.GradprobeError, match="persistent"):
            gradprobe.task_gradients(task, shared=trunk, tape=plain)
    assert sorted(returned) == [0, 2]
    recorded = read_tasks(gradprobe.load_run(rec.path))
    norms, cosines = task_norms(recorded), task_cosines(recorded)
    for step, vectors in expected.items():
        a, b = vectors["t0"], vectors["t1"]
        cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        assert returned[step].cosines[("t0", "t1")] == pytest.approx(cosine, abs=1e-5)
        assert cosines.loc[step, "t0/t1"] == pytest.approx(cosine, abs=1e-5)
        for name, vector in vectors.items():
            assert norms.loc[step, name] == pytest.approx(np.linalg.norm(vector), rel=1e-5)


def test_reports_show_the_task_gradients(tmp_path):
    from gradprobe.reports.markdown import render_markdown
    from gradprobe.reports.render import render_terminal_text, render_text
    from gradprobe.reports.summary import build_report
    from gradprobe.reports.terminal import render_report

    torch.manual_seed(2)
    trunk, head = nn.Linear(3, 3), nn.Linear(3, 1)
    optimizer = torch.optim.SGD([*trunk.parameters(), *head.parameters()], lr=0.01)
    with gradprobe.watch([trunk, head], out=tmp_path, name="r") as rec:
        for _ in range(6):
            out = head(trunk(torch.randn(8, 3))).mean()
            gradprobe.task_gradients({"up": out, "down": -out}, shared=trunk, every=1)
            optimizer.zero_grad()
            out.backward()
            optimizer.step()
    report = build_report(gradprobe.load_run(rec.path))
    norm = task_norms(report.tasks)["up"].median()
    terminal = render_terminal_text(lambda console: render_report(report, console), width=200)
    row = next(line for line in terminal.splitlines() if "cosine up/down" in line)
    assert "-1 " in row and "100%" in row
    assert any("norm up" in line and f"{norm:.4g}" in line for line in terminal.splitlines())
    assert "| cosine up/down |" in render_markdown(report)
    assert "Task gradients on the shared parameters" in render_text(report, "html")
    assert {f["kind"] for f in json.loads(render_text(report, "json"))["findings"]} >= {"task_conflict"}
