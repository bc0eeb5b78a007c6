"""gradprobe.lightning.GradProbe with a real Lightning Trainer: what it records, clipping, run status."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import require

pl = require("lightning.pytorch", reason="the Lightning callback needs the `lightning` package")

import gradprobe  # noqa: E402
from gradprobe.errors import GradprobeError  # noqa: E402
from gradprobe.lightning import GradProbe  # noqa: E402

BATCHES = 8


def _loader(batch_size: int = 4) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCHES * batch_size, 6, generator=g)
    y = 3 * x[:, :1] - x[:, 1:2] + 0.1 * torch.randn(len(x), 1, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)


def _norms(module: torch.nn.Module) -> dict[str, float]:
    return {n: torch.linalg.vector_norm(p.grad).item() for n, p in module.named_parameters() if p.grad is not None}


def _global(norms: dict[str, float]) -> float:
    return math.sqrt(sum(v * v for v in norms.values()))


class Regressor(pl.LightningModule):
    """A small MLP that keeps, per optimizer step, the losses it computed and the gradients the step used."""

    def __init__(self, fail_at: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh())
        self.head = torch.nn.Linear(16, 1)
        self.fail_at = fail_at
        self.losses: list[float] = []
        self.stepped: list[dict[str, torch.Tensor]] = []
        self.params_before: list[dict[str, torch.Tensor]] = []
        self.params_after: list[dict[str, torch.Tensor]] = []

    def training_step(self, batch, index):
        if self.fail_at is not None and index == self.fail_at:
            raise ValueError("boom in training_step")
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.head(self.body(x)), y)
        self.losses.append(loss.item())
        return loss

    def on_before_optimizer_step(self, optimizer):  # runs after every callback's hook
        self.stepped.append({n: p.grad.detach().clone() for n, p in self.named_parameters()})
        self.params_before.append({n: p.detach().clone() for n, p in self.named_parameters()})

    def on_train_batch_end(self, outputs, batch, index):
        if len(self.params_after) < len(self.params_before):
            self.params_after.append({n: p.detach().clone() for n, p in self.named_parameters()})

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class PreClipProbe(pl.Callback):
    """Reads the gradients in on_before_optimizer_step before GradProbe does (listed first)."""

    def __init__(self):
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads.append({n: p.grad.detach().clone() for n, p in pl_module.named_parameters()})


def _trainer(callbacks, **kwargs) -> pl.Trainer:
    return pl.Trainer(max_epochs=1, callbacks=callbacks, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", **kwargs)


def test_records_the_gradients_the_optimizer_uses_with_module_names_and_loss(tmp_path):
    model = Regressor()
    probe = GradProbe(out=tmp_path, every=1, name="fit")
    trainer = _trainer([probe], accumulate_grad_batches=2)
    trainer.fit(model, _loader())

    run = gradprobe.load_run(probe.path)
    assert probe.path == tmp_path / "fit"
    assert run.meta["status"] == "finished" and run.meta["framework"]["name"] == "torch"
    assert list(run.layer_table["name"]) == [n for n, _ in model.named_parameters()]
    steps = run.steps
    assert len(steps) == trainer.global_step == BATCHES // 2 == len(model.stepped)
    expected_global = [_global({n: torch.linalg.vector_norm(g).item() for n, g in grads.items()})
                       for grads in model.stepped]
    np.testing.assert_allclose(steps["global_norm"], expected_global, rtol=1e-5)
    np.testing.assert_allclose(steps["global_norm_post"], expected_global, rtol=1e-5)
    assert (steps["clip_scale"] == 1.0).all() and steps["clip_threshold"].isna().all()
    # Lightning divides each micro-batch loss by accumulate_grad_batches: the step records their mean.
    np.testing.assert_allclose(steps["loss"], np.asarray(model.losses).reshape(-1, 2).mean(axis=1), rtol=1e-5)
    layers = run.layers
    for step, grads in enumerate(model.stepped):
        recorded = layers[layers["step"] == step].set_index("name")["norm"]
        for name, grad in grads.items():
            assert recorded[name] == pytest.approx(torch.linalg.vector_norm(grad).item(), rel=1e-5)


@pytest.mark.parametrize("spec, bound", [("global-norm:max=0.05", "norm"), ("value:max=0.01", "value")])
def test_clip_spec_bounds_what_the_optimizer_steps_with(tmp_path, spec, bound):
    model, pre = Regressor(), PreClipProbe()
    probe = GradProbe(out=tmp_path, every=1, clip=spec)
    _trainer([pre, probe]).fit(model, _loader())

    run = gradprobe.load_run(probe.path)
    assert run.meta["clip"].startswith(spec)
    assert len(pre.grads) == len(model.stepped) == len(run.steps) == BATCHES
    for step, (before, used) in enumerate(zip(pre.grads, model.stepped)):
        norm = math.sqrt(sum(torch.linalg.vector_norm(g).item() ** 2 for g in before.values()))
        for name, grad in before.items():
            if bound == "norm":
                expected = grad * min(1.0, 0.05 / (norm + 1e-6))
            else:
                expected = grad.clamp(-0.01, 0.01)
            torch.testing.assert_close(used[name], expected, rtol=1e-5, atol=1e-7)
            # SGD without momentum: the update is exactly -lr times the clipped gradient.
            delta = model.params_after[step][name] - model.params_before[step][name]
            torch.testing.assert_close(delta, -0.05 * expected, rtol=1e-4, atol=1e-7)
        row = run.steps.iloc[step]
        post = math.sqrt(sum(torch.linalg.vector_norm(g).item() ** 2 for g in used.values()))
        assert row["global_norm"] == pytest.approx(norm, rel=1e-5)
        assert row["global_norm_post"] == pytest.approx(post, rel=1e-5)
    assert (run.steps["global_norm_post"] < run.steps["global_norm"]).all()  # the bounds are tight enough to fire


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_lightning_clipping_is_applied_recorded_and_given_back(tmp_path, algorithm):
    model, pre = Regressor(), PreClipProbe()
    probe = GradProbe(out=tmp_path, every=1)
    trainer = _trainer([pre, probe], gradient_clip_val=0.02, gradient_clip_algorithm=algorithm)
    trainer.fit(model, _loader())

    run = gradprobe.load_run(probe.path)
    assert run.meta["clip"].startswith("global-norm:max=0.02" if algorithm == "norm" else "value:max=0.02")
    assert trainer.gradient_clip_val == 0.02
    for before, used in zip(pre.grads, model.stepped):
        norm = math.sqrt(sum(torch.linalg.vector_norm(g).item() ** 2 for g in before.values()))
        for name, grad in before.items():
            if algorithm == "norm":  # torch.nn.utils.clip_grad_norm_'s formula
                expected = grad * min(1.0, 0.02 / (norm + 1e-6))
            else:
                expected = grad.clamp(-0.02, 0.02)
            torch.testing.assert_close(used[name], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_less(run.steps["clip_scale"], 1.0)


def test_exception_in_training_marks_the_run_crashed_and_keeps_its_steps(tmp_path):
    model = Regressor(fail_at=5)
    probe = GradProbe(out=tmp_path, every=1)
    trainer = _trainer([probe], gradient_clip_val=1.0)
    with pytest.raises(ValueError, match="boom"):
        trainer.fit(model, _loader())

    run = gradprobe.load_run(probe.path)
    assert run.meta["status"] == "crashed"
    assert run.meta["error"] == "ValueError: boom in training_step"
    assert len(run.steps) == 5 == len(model.stepped)
    assert trainer.gradient_clip_val == 1.0


class TwoOptimizers(pl.LightningModule):
    """Manual optimization with two optimizers on two sub-networks, each with its own loss."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.automatic_optimization = False
        self.encoder = torch.nn.Linear(6, 3)
        self.decoder = torch.nn.Linear(3, 1)
        self.losses: list[tuple[float, float]] = []
        self.norms: list[tuple[float, float]] = []

    def training_step(self, batch, index):
        opt_enc, opt_dec = self.optimizers()
        x, y = batch
        dec_loss = torch.nn.functional.mse_loss(self.decoder(self.encoder(x).detach()), y)
        opt_dec.zero_grad()
        self.manual_backward(dec_loss)
        dec_norm = _global(_norms(self.decoder))
        opt_dec.step()
        enc_loss = self.encoder(x).pow(2).mean()
        opt_enc.zero_grad()
        self.manual_backward(enc_loss)
        enc_norm = _global(_norms(self.encoder))
        opt_enc.step()
        self.losses.append((enc_loss.item(), dec_loss.item()))
        self.norms.append((enc_norm, dec_norm))

    def configure_optimizers(self):
        return torch.optim.Adam(self.encoder.parameters(), lr=1e-2), torch.optim.SGD(self.decoder.parameters(), lr=0.1)


def test_manual_optimization_records_each_optimizer_with_its_own_loss(tmp_path):
    model = TwoOptimizers()
    probe = GradProbe(out=tmp_path, every=2)
    _trainer([probe]).fit(model, _loader())

    run = gradprobe.load_run(probe.path)
    classes = {o["index"]: o["class"] for o in run.meta["optimizers"]}
    assert sorted(classes.values()) == ["Adam", "SGD"]
    by_class = {cls: run.steps[run.steps["optimizer"] == index] for index, cls in classes.items()}
    enc_loss, dec_loss = np.asarray(model.losses).T
    enc_norm, dec_norm = np.asarray(model.norms).T
    np.testing.assert_allclose(by_class["Adam"]["loss"], enc_loss, rtol=1e-5)
    np.testing.assert_allclose(by_class["SGD"]["loss"], dec_loss, rtol=1e-5)
    np.testing.assert_allclose(by_class["Adam"]["global_norm"], enc_norm, rtol=1e-5)
    np.testing.assert_allclose(by_class["SGD"]["global_norm"], dec_norm, rtol=1e-5)
    owners = run.layer_table.set_index("name")["optimizer"]
    adam = next(i for i, c in classes.items() if c == "Adam")
    assert {n for n, o in owners.items() if o == adam} == {"encoder.weight", "encoder.bias"}
    assert sorted(run.layers["step"].unique()) == list(range(0, BATCHES, 2))


def test_amp_loss_is_recorded_unscaled(tmp_path):
    from lightning.pytorch.plugins.precision import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    model = Regressor()
    probe = GradProbe(out=tmp_path, every=1)
    _trainer([probe], plugins=[MixedPrecision("16-mixed", "cpu", scaler)]).fit(model, _loader())

    run = gradprobe.load_run(probe.path)
    np.testing.assert_allclose(run.steps["loss"], model.losses, rtol=2e-3)
    unscaled = [_global({n: torch.linalg.vector_norm(g.float()).item() for n, g in grads.items()})
                for grads in model.stepped]
    np.testing.assert_allclose(run.steps["global_norm"], unscaled, rtol=1e-4)


def test_bad_clip_spec_fails_before_training():
    with pytest.raises(GradprobeError, match="global-norm"):
        GradProbe(clip="global-norm:maxx=1")


def test_an_internal_error_stops_recording_but_training_goes_on(tmp_path, monkeypatch, capsys):
    from gradprobe.pytorch.step_buffer import StepBuffer

    def broken(self, grad_scale=None):
        raise RuntimeError("measure failed")

    reference = Regressor()
    _trainer([], gradient_clip_val=0.02).fit(reference, _loader())
    monkeypatch.setattr(StepBuffer, "measure", broken)
    model = Regressor()
    probe = GradProbe(out=tmp_path, every=1)
    trainer = _trainer([probe], gradient_clip_val=0.02)
    trainer.fit(model, _loader())

    assert trainer.global_step == BATCHES and trainer.gradient_clip_val == 0.02
    assert "internal error" in capsys.readouterr().err
    # Trained as without gradprobe, Lightning's clipping included (gradprobe had taken it over).
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, msg=name)
    run = gradprobe.load_run(probe.path)
    assert run.meta["status"] == "finished" and len(run.steps) == 0
