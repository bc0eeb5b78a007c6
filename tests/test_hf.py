"""gradprobe.hf.GradProbeCallback with a real Hugging Face Trainer on a tiny, randomly initialised BERT."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from conftest import require

transformers = require("transformers", reason="the Hugging Face callback needs `transformers`")
require("accelerate", reason="transformers' Trainer needs `accelerate`")

import gradprobe  # noqa: E402
from gradprobe.hf import GradProbeCallback  # noqa: E402

STEPS = 4


def _model() -> "transformers.PreTrainedModel":
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=16, num_labels=2)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


class _Data(torch.utils.data.Dataset):
    def __init__(self, n: int = 64):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 40, (n, 8), generator=g)
        self.labels = (self.ids[:, 0] > 20).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": self.labels[i]}


def _args(tmp_path, **kwargs) -> "transformers.TrainingArguments":
    settings = dict(output_dir=str(tmp_path / "trainer"), max_steps=STEPS, per_device_train_batch_size=4,
                    gradient_accumulation_steps=2, learning_rate=1e-3, logging_steps=1, report_to=[],
                    save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0)
    settings.update(kwargs)
    return transformers.TrainingArguments(**settings)


class UsedGradients(transformers.TrainerCallback):
    """Listed after GradProbeCallback: the gradients right before optimizer.step(), as the update uses them
    (``used``, ``norms``), and as the step's last backward() left them, before any clipping (``pre``, read by
    a post-accumulate hook that neither gradprobe nor the Trainer touches)."""

    def __init__(self):
        self.norms: list[dict[str, float]] = []
        self.used: list[dict[str, torch.Tensor]] = []
        self.pre: list[dict[str, torch.Tensor]] = []
        self._accumulated: dict[str, torch.Tensor] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        for name, p in model.named_parameters():
            p.register_post_accumulate_grad_hook(
                lambda p, name=name: self._accumulated.update({name: p.grad.detach().clone()}))

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.norms.append({n: torch.linalg.vector_norm(p.grad).item()
                           for n, p in model.named_parameters() if p.grad is not None})
        self.used.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
        self.pre.append(dict(self._accumulated))


def _global(norms: dict[str, float]) -> float:
    return math.sqrt(sum(v * v for v in norms.values()))


def _train(tmp_path, probe, max_grad_norm=0.05, callbacks=(), loss_kwargs=True):
    """Train with ``probe`` first; ``loss_kwargs``: whether the Trainer normalises each micro-batch loss
    by the item count of the whole accumulated batch (else it divides by gradient_accumulation_steps)."""
    model, used = _model(), UsedGradients()
    trainer = transformers.Trainer(model=model, args=_args(tmp_path, max_grad_norm=max_grad_norm),
                                   train_dataset=_Data(), callbacks=[probe, used, *callbacks])
    trainer.model_accepts_loss_kwargs = loss_kwargs
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry and "grad_norm" in entry]
    return trainer, model, used, logged


@pytest.mark.parametrize("loss_kwargs", [True, False])
def test_records_pre_clip_norms_loss_and_the_trainers_own_clipping(tmp_path, capsys, loss_kwargs):
    probe = GradProbeCallback(out=tmp_path, every=1)
    trainer, model, used, logged = _train(tmp_path, probe, loss_kwargs=loss_kwargs)

    run = gradprobe.load_run(probe.path)
    assert run.meta["status"] == "finished"
    assert run.meta["clip"].startswith("global-norm:max=0.05")
    assert trainer.args.max_grad_norm == 0.05  # given back once training ended
    assert str(probe.path) in capsys.readouterr().err
    assert list(run.layer_table["name"]) == [n for n, p in model.named_parameters() if p.requires_grad]

    steps = run.steps
    assert len(steps) == len(logged) == len(used.norms) == STEPS
    # The Trainer logs the pre-clip norm and the loss of each step.
    np.testing.assert_allclose(steps["global_norm"], [e["grad_norm"] for e in logged], rtol=1e-4)
    np.testing.assert_allclose(steps["loss"], [e["loss"] for e in logged], rtol=1e-5)
    post = [_global(norms) for norms in used.norms]
    np.testing.assert_allclose(steps["global_norm_post"], post, rtol=1e-4)
    np.testing.assert_allclose(post, np.minimum(steps["global_norm"], 0.05), rtol=1e-4)
    pre = np.array([_norm(grads) for grads in used.pre])  # measured before any clipping, without gradprobe
    np.testing.assert_allclose(steps["global_norm"], pre, rtol=1e-4)
    assert (pre > 0.05).all() and (steps["clip_scale"] < 1).all()
    for before, after, norm in zip(used.pre, used.used, pre):  # the update used the policy's result
        for name, g in before.items():
            torch.testing.assert_close(after[name], g * min(1.0, 0.05 / (norm + 1e-6)), rtol=1e-4, atol=1e-8)

    layers = run.layers
    for step, norms in enumerate(used.norms):
        row = layers[layers["step"] == step].set_index("name")
        scale = steps["clip_scale"].iloc[step]
        for name, norm in norms.items():  # recorded pre-clip, used post-clip: one scale apart
            assert row.loc[name, "norm"] * scale == pytest.approx(norm, rel=1e-4, abs=1e-9)


def _norm(grads: dict[str, torch.Tensor]) -> float:
    return _global({n: torch.linalg.vector_norm(g).item() for n, g in grads.items()})


def test_clip_spec_replaces_the_trainers_clipping(tmp_path, monkeypatch):
    calls = []
    trainer_clip = transformers.Trainer._clip_grad_norm
    monkeypatch.setattr(transformers.Trainer, "_clip_grad_norm",
                        lambda trainer, model: calls.append(1) or trainer_clip(trainer, model))
    probe = GradProbeCallback(out=tmp_path, every=2, clip="value:max=0.001")
    trainer, _, used, logged = _train(tmp_path, probe, max_grad_norm=0.01)

    assert calls == []  # the Trainer's own max_grad_norm clipping was switched off for the whole train()
    run = gradprobe.load_run(probe.path)
    assert run.meta["clip"] == "value:max=0.001" and trainer.args.max_grad_norm == 0.01
    pre = [_norm(grads) for grads in used.pre]
    assert len(pre) == STEPS and min(pre) > 0.01  # the Trainer's clip would have changed every step
    np.testing.assert_allclose(run.steps["global_norm"], pre, rtol=1e-4)
    np.testing.assert_allclose(run.steps["global_norm"], [e["grad_norm"] for e in logged], rtol=1e-4)
    np.testing.assert_allclose(run.steps["global_norm_post"], [_norm(grads) for grads in used.used], rtol=1e-4)
    clamped = 0
    for before, after in zip(used.pre, used.used):  # exactly the policy's result: each element clamped
        assert before.keys() == after.keys()
        for name, g in before.items():
            torch.testing.assert_close(after[name], g.clamp(-0.001, 0.001), rtol=0, atol=0)
            clamped += int((g.abs() > 0.001).sum())
    assert clamped > 0


class _FailAt(transformers.TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise RuntimeError("boom at step 2")


def test_a_train_that_raised_is_closed_as_crashed_by_the_next_train(tmp_path):
    probe = GradProbeCallback(out=tmp_path, every=1)
    with pytest.raises(RuntimeError, match="boom"):
        _train(tmp_path, probe, callbacks=[_FailAt()])
    crashed = probe.path
    assert gradprobe.load_run(crashed).meta["status"] == "running"

    _train(tmp_path, probe)
    first, second = gradprobe.load_run(crashed), gradprobe.load_run(probe.path)
    assert second.path != first.path
    assert first.meta["status"] == "crashed" and "on_train_end" in first.meta["error"]
    assert len(first.steps) == 2 and second.meta["status"] == "finished" and len(second.steps) == STEPS


def test_an_error_in_the_loss_hook_stops_recording_but_training_goes_on(tmp_path, monkeypatch, capsys):
    from gradprobe.hf import _StepLoss

    def broken(self, module, args, kwargs, output):
        raise RuntimeError("loss hook failed")

    _, reference, _, _ = _train(tmp_path / "plain", GradProbeCallback(out=tmp_path / "plain"))
    monkeypatch.setattr(_StepLoss, "forward_hook", broken)
    probe = GradProbeCallback(out=tmp_path, every=1)
    trainer, model, used, _ = _train(tmp_path, probe)

    assert trainer.state.global_step == STEPS == len(used.norms) and trainer.args.max_grad_norm == 0.05
    assert "internal error" in capsys.readouterr().err
    # Trained as without gradprobe, the Trainer's max_grad_norm clipping included (gradprobe had taken it over).
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, msg=name)
    run = gradprobe.load_run(probe.path)
    assert run.meta["status"] == "finished" and len(run.steps) == 0
