"""Gradient accumulation that divides the loss twice: the graph walk, the recorder's count and the finding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradprobe.analysis import diagnose
from gradprobe.pytorch.loss_factors import divided_twice, loss_divisors
from conftest import require
from test_analysis_support import record

X = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
Y = X @ torch.randn(8, 1, generator=torch.Generator().manual_seed(1))


def _loss():
    w = torch.randn(8, 1, requires_grad=True)
    return nn.functional.mse_loss(X @ w, Y), w


def test_divisors_are_read_from_the_graph_outermost_first():
    loss, w = _loss()
    assert loss_divisors(loss) == ()
    assert loss_divisors((loss / 4) / 4) == (4.0, 4.0)
    assert loss_divisors(loss * 0.25) == pytest.approx((4.0,))
    assert loss_divisors(0.5 * (loss / 3)) == pytest.approx((2.0, 3.0))
    assert loss_divisors(loss / torch.tensor(8.0)) == (8.0,)
    summed = ((X @ w - Y) ** 2).sum()
    assert loss_divisors(summed / 32 / 4) == (4.0,)  # sum / n is the script's own mean, not a scaling
    assert loss_divisors(loss / w.sum()) == ()  # a divisor that depends on the parameters is no constant


def test_divided_twice_needs_every_pass_of_a_multi_pass_step():
    assert divided_twice([(4.0, 4.0)] * 4)
    assert not divided_twice([(4.0,)] * 4)  # the usual single division
    assert not divided_twice([(4.0, 4.0)])  # one pass: no accumulation
    assert not divided_twice([(4.0, 4.0)] * 3 + [(4.0,)])
    assert not divided_twice([(2.0, 2.0)] * 4)  # divided by something else than the pass count
    assert not divided_twice([])


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def _accumulating(model, optimizer, divisions: int, steps: int = 25, k: int = 4, scaler=None):
    seen: list[float] = []  # the global norm each update used, measured here

    def train():
        for step in range(steps):
            optimizer.zero_grad()
            for micro in range(k):
                i = (step * k + micro) % 8
                loss = nn.functional.mse_loss(model(X[i * 32:(i + 1) * 32]), Y[i * 32:(i + 1) * 32])
                for _ in range(divisions):
                    loss = loss / k
                (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.unscale_(optimizer)
            seen.append(torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()])).item())
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
    return train, seen


@pytest.mark.parametrize("amp", [False, True])
def test_sgd_step_whose_passes_divide_twice_is_a_warning(tmp_path, amp):
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if amp else None
    train, seen = _accumulating(model, optimizer, divisions=2, scaler=scaler)
    run = record(model, train, tmp_path, "twice")
    assert run.meta["optimizers"][0]["loss_divided_twice"] == {"calls": 25, "first_step": 0, "micro_batches": 4,
                                                               "last_step": 24}
    assert run.steps["global_norm"].to_numpy() == pytest.approx(seen, rel=1e-5)  # recorded as before
    (finding,) = [f for f in diagnose(run) if f.kind == "loss_divided_twice"]
    assert (finding.severity, finding.layers, finding.steps) == ("warning", [], (0, 24))
    assert finding.evidence == {"optimizer": 0, "steps": 25, "micro_batches": 4, "gradient_scale": 0.25}
    assert "learning rate 4x smaller" in finding.advice and "SGD" in finding.advice


@pytest.mark.parametrize("divisions", [0, 1])
def test_dividing_once_or_not_at_all_is_not_a_finding(tmp_path, divisions):
    model = _mlp()
    train, _ = _accumulating(model, torch.optim.SGD(model.parameters(), lr=0.01), divisions=divisions)
    run = record(model, train, tmp_path, f"div{divisions}")
    assert "loss_divided_twice" not in run.meta["optimizers"][0]
    assert all(f.kind != "loss_divided_twice" for f in diagnose(run))


def test_under_adam_it_is_info(tmp_path):
    model = _mlp()
    train, _ = _accumulating(model, torch.optim.Adam(model.parameters(), lr=1e-3), divisions=2)
    (finding,) = [f for f in diagnose(record(model, train, tmp_path, "adam")) if f.kind == "loss_divided_twice"]
    assert finding.severity == "info"
    assert "Adam divides by a running gradient scale" in finding.advice and "4x too small" in finding.advice


def test_lightning_training_step_that_divides_by_the_accumulation_count(tmp_path):
    pl = require("lightning.pytorch", reason="Lightning's own division needs the `lightning` package")
    import gradprobe

    class Divides(pl.LightningModule):
        def __init__(self, divide: bool):
            super().__init__()
            self.net = _mlp()
            self.divide = divide

        def training_step(self, batch, index):
            loss = nn.functional.mse_loss(self.net(batch[0]), batch[1])
            return loss / 2 if self.divide else loss  # Lightning divides by accumulate_grad_batches itself

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=16)
    for divide in (True, False):
        module = Divides(divide)
        trainer = pl.Trainer(max_epochs=1, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
        with gradprobe.watch(module, out=tmp_path, name=f"pl{divide}") as rec:
            trainer.fit(module, loader)
        entry = gradprobe.load_run(rec.path).meta["optimizers"][0].get("loss_divided_twice")
        assert entry == ({"calls": 8, "first_step": 0, "micro_batches": 2, "last_step": 7} if divide else None)
