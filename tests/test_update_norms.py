"""The update each optimizer step applied, per layer, against parameter copies the test takes itself."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import require, run_cli

torch = require("torch")

import gradprobe  # noqa: E402
from gradprobe.analysis import diagnose  # noqa: E402


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _train(model, optimizer, steps, out, every, on_step=None):
    """Train on fixed random batches; ``on_step(before, after)`` sees the test's own parameter copies."""
    data = torch.Generator().manual_seed(1)
    with gradprobe.watch(model, out=out, every=every) as recording:
        for step in range(steps):
            x, y = torch.randn(32, 6, generator=data), torch.randn(32, 3, generator=data)
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            grads = {name: p.grad.clone() for name, p in model.named_parameters()}
            before = {name: p.detach().clone() for name, p in model.named_parameters()}
            optimizer.step()
            if on_step is not None:
                on_step(step, grads, before, {name: p.detach().clone() for name, p in model.named_parameters()})
    return recording.load()


def _by_step(updates):
    return {(int(r.step), str(r.name)): r for r in updates.itertuples()}


def _sgd_updates(tmp_path, steps: int, every: int, lr: float = 0.05):
    """Train ``_model()`` with SGD; the recorded updates by (step, name), and what SGD applies:
    ``lr`` times the gradient's norm, computed here."""
    model, expected = _model(), {}

    def note(step, grads, _before, _after):
        for name, g in grads.items():
            expected[(step, name)] = lr * torch.linalg.vector_norm(g).item()

    run = _train(model, torch.optim.SGD(model.parameters(), lr=lr), steps, tmp_path, every=every, on_step=note)
    return _by_step(run.updates), expected


def test_sgd_update_is_lr_times_gradient_on_sampled_steps_only(tmp_path):
    rows, expected = _sgd_updates(tmp_path, 9, every=3)
    assert sorted({step for step, _ in rows}) == [0, 3, 6]
    assert len(rows) == 3 * 4
    for key, row in rows.items():
        assert row.update_norm == pytest.approx(expected[key], rel=1e-5)


def test_a_model_above_the_copy_bound_is_measured_a_slice_per_sampled_step_in_turn(tmp_path, monkeypatch):
    from gradprobe.pytorch import update_norms

    sizes = {name: p.numel() * p.element_size() for name, p in _model().named_parameters()}
    bound = 400  # bytes: the 384-byte first weight alone, or the three other tensors together
    monkeypatch.setattr(update_norms, "MAX_COPY_BYTES", bound)
    rows, expected = _sgd_updates(tmp_path, 12, every=3)
    measured = {step: sorted(name for s, name in rows if s == step) for step in (0, 3, 6, 9)}
    assert measured == {0: ["0.weight"], 3: ["0.bias", "2.bias", "2.weight"], 6: ["0.weight"],
                        9: ["0.bias", "2.bias", "2.weight"]}
    assert all(sum(sizes[name] for name in names) <= bound for names in measured.values())
    for key, row in rows.items():
        assert row.update_norm == pytest.approx(expected[key], rel=1e-5)


def test_adam_update_and_ratio_match_the_parameters_before_and_after(tmp_path):
    model = _model(1)
    expected = {}

    def note(step, _grads, before, after):
        for name in before:
            expected[(step, name)] = (torch.linalg.vector_norm(after[name] - before[name]).item(),
                                      torch.linalg.vector_norm(before[name]).item())

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    run = _train(model, optimizer, 6, tmp_path, every=2, on_step=note)
    rows = _by_step(run.updates)
    assert sorted({step for step, _ in rows}) == [0, 2, 4]
    for key, row in rows.items():
        update, weight = expected[key]
        assert row.update_norm == pytest.approx(update, rel=1e-4)
        assert row.param_norm == pytest.approx(weight, rel=1e-5)
        assert row.ratio == pytest.approx(update / weight, rel=1e-4)


class _Unused(torch.nn.Module):
    """A linear model plus a layer whose output is multiplied by 0: its gradient is exactly 0."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 3)
        self.side = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(x) + 0.0 * self.side(x)


def test_frozen_layer_needs_only_the_measured_update(tmp_path):
    """Two sampled steps are too few for the stalled-layer check; the measured zero update suffices."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.0},
                                 {"params": model[2].parameters()}], lr=0.1)
    run = _train(model, optimizer, 2, tmp_path, every=1)
    findings = {f.kind: f for f in diagnose(run)}
    assert findings["frozen_layer"].layers == ["0.weight", "0.bias"]
    assert "stalled_layer" not in findings
    assert (run.updates.set_index("name")["update_norm"][["0.weight", "0.bias"]] == 0).all()


def test_lr_zero_group_is_frozen_and_weight_decay_alone_is_decay_only(tmp_path):
    torch.manual_seed(0)
    model = _Unused()
    head = [model.fc.weight]
    optimizer = torch.optim.AdamW([{"params": head, "lr": 0.0}, {"params": [model.fc.bias]},
                                   {"params": list(model.side.parameters())}], lr=1e-2, weight_decay=0.1)
    data = torch.Generator().manual_seed(2)
    with gradprobe.watch(model, out=tmp_path, every=1) as recording:
        for _ in range(30):
            x = torch.randn(16, 6, generator=data)
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            optimizer.step()
    findings = {f.kind: f for f in diagnose(recording.load())}
    (frozen,) = [f for f in findings.values() if f.kind in ("frozen_layer", "stalled_layer")]  # one cause, once
    assert frozen.layers == ["fc.weight"]
    assert set(findings["decay_only"].layers) == {"side.weight", "side.bias"}
    updates = recording.load().updates
    side = updates[updates["name"] == "side.weight"]
    # AdamW with a zero gradient only decays: the update is lr * wd * the weight
    assert np.allclose(side["ratio"], 1e-2 * 0.1, rtol=1e-3)


ACCUMULATING = """
import torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
for step in range(12):
    opt.zero_grad()
    for micro in range(2):
        x, y = torch.randn(16, 6), torch.randn(16, 3)
        (torch.nn.functional.mse_loss(model(x), y) / 2).backward()
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    print(f"{norm.item():.9g}")
    opt.step()
"""


@pytest.mark.parametrize("signals", [True, False])
def test_no_signals_records_the_norms_without_updates_or_micro_batches(tmp_path, write_script, signals):
    script = write_script(ACCUMULATING)
    flags = ["--every", "3"] + ([] if signals else ["--no-signals"])
    result = run_cli("profile", "-q", *flags, "--out", "runs", "--name", "r", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = gradprobe.load_run(tmp_path / "runs" / "r")
    assert run.meta["sampling"]["signals"] is signals
    norms = [float(line) for line in result.stdout.split()]
    assert run.steps["global_norm"].to_numpy() == pytest.approx(norms, rel=1e-5)
    assert sorted(run.layers["step"].unique()) == [0, 3, 6, 9]
    if signals:
        assert sorted(run.updates["step"].unique()) == [0, 3, 6, 9] and len(run.noise) > 0
    else:
        assert run.updates.empty and run.noise.empty


def test_watch_without_signals_measures_no_update(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradprobe.watch(model, out=tmp_path, every=1, signals=False) as recording:
        for _ in range(4):
            opt.zero_grad()
            model(torch.randn(8, 6)).square().mean().backward()
            opt.step()
    run = recording.load()
    assert len(run.steps) == 4 and run.layers["step"].nunique() == 4 and run.updates.empty
