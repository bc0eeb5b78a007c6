"""Real training-loop shapes, profiled and clipped, checked against the script's own measurements.

Each script measures, with its own hooks and ``torch.linalg.vector_norm`` (no
gradprobe code), the gradient before clipping and the gradient the update
used, and writes them to ``seen.json``; the test compares them with the run
and with the clip policy's formula, ``g * min(1, max / (||g|| + 1e-6))``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import require, run_cli

import gradprobe
from gradprobe.pytorch.recorder import MANUAL_RESETS

CAP = 0.05

NORM = """
def norm(tensors):
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors])))
"""


def clipped(pre: np.ndarray, cap: float = CAP) -> np.ndarray:
    """The global-norm policy's result for pre-clip norms ``pre``."""
    return pre * np.minimum(1.0, cap / (pre + 1e-6))


def seen_and_run(tmp_path):
    seen = json.loads((tmp_path / "seen.json").read_text())
    runs = gradprobe.list_runs(tmp_path / "runs")
    assert len(runs) == 1
    return seen, runs[0]


def run_against_seen(tmp_path, script, clip: str | None, steps: int):
    """Profile ``script`` (or ``run --clip clip``) at every step and check the run against what the
    script measured itself: global and per-layer norms, loss, and the gradient its update used."""
    command = ["profile", "--every", "1"] if clip is None else ["run", "--every", "1", "--clip", clip]
    result = run_cli(*command, "--out", "runs", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    seen, run = seen_and_run(tmp_path)
    pre = np.array([s["pre"] for s in seen])
    assert len(run.steps) == steps
    np.testing.assert_allclose(run.steps["global_norm"], pre, rtol=1e-5)
    np.testing.assert_allclose(run.steps["loss"], [s["loss"] for s in seen], rtol=1e-5)
    layers = run.layers.pivot(index="step", columns="layer", values="norm").to_numpy()
    np.testing.assert_allclose(layers, [s["layers"] for s in seen], rtol=1e-5)
    used = np.array([s["used"] for s in seen])
    np.testing.assert_allclose(used, pre if clip is None else clipped(pre), rtol=1e-5)
    return result, run


LIGHTNING = NORM + """
import json
import torch
import lightning.pytorch as pl

torch.manual_seed(0)
seen = []

class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh())
        self.head = torch.nn.Linear(16, 1)

    def training_step(self, batch, index):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.head(self.body(x)), y)
        seen.append({"loss": loss.item()})
        return loss

    def on_before_optimizer_step(self, optimizer):  # after backward, before any clipping
        seen[-1]["pre"] = norm([p.grad for p in self.parameters()])

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=0.1)
        # after the update: the gradients it used (Adam leaves them in place)
        opt.register_step_post_hook(lambda o, a, k: seen[-1].update(used=norm([p.grad for p in self.parameters()])))
        return opt

g = torch.Generator().manual_seed(0)
x = torch.randn(64, 6, generator=g)
y = 30 * x[:, :1] + torch.randn(64, 1, generator=g)
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, accelerator="cpu")
trainer.fit(Net(), loader)
json.dump(seen, open("seen.json", "w"))
"""


def test_lightning_automatic_optimisation_is_clipped_before_the_update(tmp_path, write_script):
    require("lightning.pytorch")
    script = write_script(LIGHTNING)
    result = run_cli("run", "--clip", f"global-norm:max={CAP}", "--out", "runs", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "not clipped" not in result.stderr
    seen, run = seen_and_run(tmp_path)
    pre = np.array([s["pre"] for s in seen])
    used = np.array([s["used"] for s in seen])
    assert len(seen) == 16 and (pre > CAP).all()  # every step had something to clip
    np.testing.assert_allclose(used, clipped(pre), rtol=1e-5)
    steps = run.steps
    assert len(steps) == 16
    np.testing.assert_allclose(steps["global_norm"], pre, rtol=1e-5)
    np.testing.assert_allclose(steps["global_norm_post"], used, rtol=1e-5)
    np.testing.assert_allclose(steps["clip_threshold"], CAP)
    np.testing.assert_allclose(steps["loss"], [s["loss"] for s in seen], rtol=1e-5)


TWICE = NORM + """
import json
import torch

class TwoLookSGD(torch.optim.SGD):
    \"\"\"Evaluates the closure twice per step (as SAM does) and updates with the second gradient.\"\"\"

    def step(self, closure=None):
        closure()
        closure()
        seen.append(norm([p.grad for p in model.parameters()]))
        return super().step()

torch.manual_seed(0)
seen = []
model = torch.nn.Linear(4, 1)
opt = TwoLookSGD(model.parameters(), lr=0.01)
x, y = torch.randn(32, 4), 20 * torch.randn(32, 1)

def closure():
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    return loss

for _ in range(3):
    opt.step(closure)
json.dump(seen, open("seen.json", "w"))
"""


def test_optimizer_that_reevaluates_its_closure_is_no_longer_clipped_and_says_so(tmp_path, write_script):
    script = write_script(TWICE)
    result = run_cli("run", "--clip", f"global-norm:max={CAP}", "--out", "runs", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("evaluates its closure more than once") == 1
    assert "evaluates the gradient inside" not in result.stderr
    seen, run = seen_and_run(tmp_path)
    assert min(seen) > 10 * CAP  # the second evaluation's gradient reached the update unclipped
    assert len(run.steps) == 3
    np.testing.assert_allclose(run.steps["clip_threshold"].iloc[0], CAP)  # its first evaluation was clipped
    assert run.steps["clip_threshold"].iloc[1:].isna().all()


CALLABLE_ARGUMENT = NORM + """
import json
import torch

class ScheduledSGD(torch.optim.SGD):
    \"\"\"``step(schedule)``: the learning rate comes from a plain callable, not a closure.\"\"\"

    def step(self, schedule=None):
        for group in self.param_groups:
            group["lr"] = schedule(self.count)
        self.count += 1
        seen[-1]["used"] = norm([p.grad for p in model.parameters()])
        return super().step()

torch.manual_seed(0)
seen = []
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
opt = ScheduledSGD(model.parameters(), lr=0.01)
opt.count = 0
x, y = torch.randn(32, 4), 20 * torch.randn(32, 1)
for _ in range(4):
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    seen.append({"pre": norm([p.grad for p in model.parameters()])})
    opt.step(lambda k: 0.01 / (1 + k))
json.dump(seen, open("seen.json", "w"))
"""


def test_step_taking_a_plain_callable_is_an_ordinary_clipped_step(tmp_path, write_script):
    script = write_script(CALLABLE_ARGUMENT)
    result = run_cli("run", "--clip", f"global-norm:max={CAP}", "--out", "runs", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "not clipped" not in result.stderr
    seen, run = seen_and_run(tmp_path)
    pre = np.array([s["pre"] for s in seen])
    assert (pre > CAP).all()
    np.testing.assert_allclose([s["used"] for s in seen], clipped(pre), rtol=1e-5)
    np.testing.assert_allclose(run.steps["global_norm"], pre, rtol=1e-5)


CREATE_GRAPH = NORM + """
import json
import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(16, 4, requires_grad=True), torch.randn(16, 1)
seen = []
for _ in range(5):
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.mse_loss(model(x), y)
    gx, = torch.autograd.grad(loss, x, create_graph=True)
    total = loss + gx.pow(2).sum()  # gradient penalty
    total.backward(create_graph=True)
    seen.append({"loss": total.item(), "layers": [float(torch.linalg.vector_norm(p.grad)) for p in model.parameters()],
                 "pre": norm([p.grad for p in model.parameters()])})
    opt.step()
    seen[-1]["used"] = norm([p.grad for p in model.parameters()])
json.dump(seen, open("seen.json", "w"))
"""


@pytest.mark.parametrize("clip", [None, f"global-norm:max={CAP}"])
def test_backward_with_create_graph_records_every_step(tmp_path, write_script, clip):
    result, _ = run_against_seen(tmp_path, write_script(CREATE_GRAPH), clip, steps=5)
    assert "internal error" not in result.stderr


IDLE_OPTIMIZER = NORM + """
import json
import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)  # kept for its scheduler; never stepped
scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=3)
x, y = torch.randn(32, 4), 20 * torch.randn(32, 1)
seen = []
accumulated = {}  # each gradient as backward() leaves it, before anything after backward() can touch it
for p in model.parameters():
    p.register_post_accumulate_grad_hook(lambda p: accumulated.update({id(p): p.grad.detach().clone()}))
for _ in range(9):
    model.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    seen.append({"loss": loss.item(), "pre": norm(list(accumulated.values()))})
    with torch.no_grad():
        for p in model.parameters():
            p -= opt.param_groups[0]["lr"] * p.grad
    seen[-1]["used"] = norm([p.grad for p in model.parameters()])
json.dump(seen, open("seen.json", "w"))
"""


@pytest.mark.parametrize("clip", [None, f"global-norm:max={CAP}"])
def test_optimizer_that_never_steps_falls_back_to_every_backward(tmp_path, write_script, clip):
    script = write_script(IDLE_OPTIMIZER)
    command = ["profile"] if clip is None else ["run", "--clip", clip]
    result = run_cli(*command, "--out", "runs", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("gradprobe: warning:")]
    assert len(warnings) == 1 and "(SGD) had not stepped" in warnings[0] and "it never stepped" in warnings[0]
    seen, run = seen_and_run(tmp_path)
    assert run.meta["warnings"] == [warnings[0].removeprefix("gradprobe: warning: ")]
    pre = np.array([s["pre"] for s in seen])
    assert len(run.steps) == 9  # the first backward passes are kept
    np.testing.assert_allclose(run.steps["global_norm"], pre, rtol=1e-5)
    np.testing.assert_allclose(run.steps["loss"], [s["loss"] for s in seen], rtol=1e-5)
    used = np.array([s["used"] for s in seen])
    if clip is None:
        np.testing.assert_allclose(used, pre, rtol=1e-5)
    else:  # clipped once the loop showed it updates by hand: from the backward after the MANUAL_RESETS-th reset
        k = MANUAL_RESETS
        assert (pre > CAP).all()
        np.testing.assert_allclose(used, [*pre[:k], *clipped(pre[k:])], rtol=1e-5)
        np.testing.assert_allclose(run.steps["global_norm_post"].iloc[k:], clipped(pre[k:]), rtol=1e-5)


def test_a_run_that_records_nothing_says_why(tmp_path, write_script):
    script = write_script("""
        import torch
        model = torch.nn.Linear(3, 1)
        with torch.no_grad():
            print(tuple(model(torch.ones(2, 3)).shape))
    """)
    result = run_cli("profile", "--out", "runs", str(script), cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == "(2, 1)\n", result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("gradprobe: warning:")]
    assert len(warnings) == 1 and "no step recorded" in warnings[0]
    run = gradprobe.list_runs(tmp_path / "runs")[0]
    assert run.meta["warnings"] == [warnings[0].removeprefix("gradprobe: warning: ")] and len(run.steps) == 0


LIGHTNING_ACCUMULATION = NORM + """
import json
import torch
import lightning.pytorch as pl

torch.manual_seed(0)
losses, steps = [], []

class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(6, 1)

    def training_step(self, batch, index):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        losses.append(loss.item())
        return loss

    def on_before_optimizer_step(self, optimizer):
        steps.append({"pre": norm([p.grad for p in self.parameters()]), "micro_batches": len(losses)})

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

g = torch.Generator().manual_seed(0)
x = torch.randn(64, 6, generator=g)
y = 5 * x[:, :1] * (1 + torch.arange(64.0)[:, None] / 8) + torch.randn(64, 1, generator=g)  # batches differ
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
trainer = pl.Trainer(max_epochs=1, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
trainer.fit(Net(), loader)
json.dump({"losses": losses, "steps": steps}, open("seen.json", "w"))
"""


def test_lightning_accumulation_records_the_loss_of_every_micro_batch_of_the_step(tmp_path, write_script):
    require("lightning.pytorch")
    script = write_script(LIGHTNING_ACCUMULATION)
    result = run_cli("profile", "--out", "runs", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    seen, run = seen_and_run(tmp_path)
    losses = np.array(seen["losses"])
    assert [s["micro_batches"] for s in seen["steps"]] == [2, 4, 6, 8]
    # Lightning back-propagates each micro-batch's loss divided by accumulate_grad_batches
    expected = (losses[0::2] + losses[1::2]) / 2
    assert np.abs(losses[1::2] / 2 - expected).min() > 1e-3 * expected.max()  # the last micro-batch alone is wrong
    np.testing.assert_allclose(run.steps["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(run.steps["global_norm"], [s["pre"] for s in seen["steps"]], rtol=1e-5)


TWO_OPTIMIZERS = """
import json
import torch

torch.manual_seed(0)
generator, critic = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
opt_g = torch.optim.SGD(generator.parameters(), lr=0.01)
opt_c = torch.optim.SGD(critic.parameters(), lr=0.01)
taken = {"critic": 0, "generator": 0}
for _ in range(100):
    for _ in range(2):  # the critic steps twice per generator step
        opt_c.zero_grad()
        critic(generator(torch.randn(8, 2)).detach()).mean().backward()
        opt_c.step()
        taken["critic"] += 1
        json.dump(taken, open("seen.json", "w"))
    opt_g.zero_grad()
    (-critic(generator(torch.randn(8, 2)))).mean().backward()
    opt_g.step()
    taken["generator"] += 1
    json.dump(taken, open("seen.json", "w"))
"""


def test_max_steps_counts_the_slowest_optimizer(tmp_path, write_script):
    script = write_script(TWO_OPTIMIZERS)
    result = run_cli("profile", "--max-steps", "5", "--out", "runs", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    seen, run = seen_and_run(tmp_path)
    # the step that reached the limit ends the script before the script counts it
    assert seen == {"critic": 10, "generator": 4}
    counts = run.steps.groupby("optimizer").size().to_dict()
    assert sorted(counts.values()) == [5, 10]


SELF_CLIPPING = NORM + """
import json
import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
opt.register_step_post_hook(lambda o, a, k: seen[-1].update(used=norm([p.grad for p in model.parameters()])))
x, y = torch.randn(32, 4), 20 * torch.randn(32, 1)
seen = []
for _ in range(6):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    seen.append({"pre": norm([p.grad for p in model.parameters()])})
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    opt.step()
json.dump(seen, open("seen.json", "w"))
"""


@pytest.mark.parametrize("cap", [None, CAP, 2.0])
def test_global_norm_is_the_norm_before_the_scripts_own_clip_with_or_without_a_policy(tmp_path, write_script, cap):
    script = write_script(SELF_CLIPPING)
    command = ["profile"] if cap is None else ["run", "--clip", f"global-norm:max={cap}"]
    result = run_cli(*command, "--every", "1", "--out", "runs", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    seen, run = seen_and_run(tmp_path)
    pre = np.array([s["pre"] for s in seen])
    assert (pre > 0.5).all()  # the script's clip fires on every step
    used = clipped(pre, 0.5) if cap is None else clipped(clipped(pre, 0.5), cap)
    np.testing.assert_allclose([s["used"] for s in seen], used, rtol=1e-5)
    steps = run.steps
    assert len(steps) == 6
    np.testing.assert_allclose(steps["global_norm"], pre, rtol=1e-5)
    np.testing.assert_allclose(steps["global_norm_post"], used, rtol=1e-5)
    np.testing.assert_allclose(steps["clip_scale"], used / pre, rtol=1e-5)
    np.testing.assert_allclose(steps["clip_threshold"], 0.5 if cap is None else cap)


ACCELERATE = NORM + """
import json
import torch
from accelerate import Accelerator

torch.manual_seed(0)
accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
opt = torch.optim.Adam(model.parameters(), lr=0.01)
# after the update: the gradients it used (Adam leaves them in place)
opt.register_step_post_hook(lambda o, a, k: seen[-1].update(used=norm([p.grad for p in model.parameters()])))
g = torch.Generator().manual_seed(0)
x = torch.randn(64, 6, generator=g)
y = 30 * x[:, :1] * (1 + torch.arange(64.0)[:, None] / 8) + torch.randn(64, 1, generator=g)  # batches differ
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
model, opt, loader = accelerator.prepare(model, opt, loader)
seen, losses = [], []
for xb, yb in loader:
    with accelerator.accumulate(model):
        loss = torch.nn.functional.mse_loss(model(xb), yb)
        losses.append(loss.item())
        accelerator.backward(loss)  # back-propagates loss / gradient_accumulation_steps
        if accelerator.sync_gradients:  # gradprobe clips at the step, so this is the pre-clip gradient
            seen.append({"pre": norm([p.grad for p in model.parameters()]), "micro_batches": len(losses),
                         "layers": [float(torch.linalg.vector_norm(p.grad)) for p in model.parameters()]})
        opt.step()
        opt.zero_grad()
names = [n for n, _ in model.named_parameters()]
json.dump({"steps": seen, "losses": losses, "names": names},
          open(f"seen-{accelerator.process_index}.json", "w"))
"""


def check_accelerate(tmp_path, clip, rank=0):
    """One rank's view of the accelerate loop against the run (recorded by rank 0)."""
    seen = json.loads((tmp_path / f"seen-{rank}.json").read_text())
    steps = seen["steps"]
    micro = len(seen["losses"])
    assert [s["micro_batches"] for s in steps] == list(range(2, micro + 1, 2))
    pre = np.array([s["pre"] for s in steps])
    used = np.array([s["used"] for s in steps])
    if clip is None:
        np.testing.assert_allclose(used, pre, rtol=1e-6)
    else:
        assert (pre > CAP).all()
        np.testing.assert_allclose(used, clipped(pre), rtol=1e-5)
    return seen, pre


@pytest.mark.parametrize("clip", [None, f"global-norm:max={CAP}"])
def test_accelerate_loop_with_accumulation_is_recorded_and_clipped(tmp_path, write_script, clip):
    require("accelerate")
    script = write_script(ACCELERATE)
    command = ["profile", "--every", "1"] if clip is None else ["run", "--every", "1", "--clip", clip]
    result = run_cli(*command, "--out", "runs", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    seen, pre = check_accelerate(tmp_path, clip)
    run = gradprobe.list_runs(tmp_path / "runs")[0]
    assert len(run.steps) == 4 and list(run.layer_table["name"]) == seen["names"] == [
        "0.weight", "0.bias", "2.weight", "2.bias"]
    np.testing.assert_allclose(run.steps["global_norm"], pre, rtol=1e-5)
    losses = np.array(seen["losses"])  # each micro-batch back-propagated divided by the 2 steps accumulated
    np.testing.assert_allclose(run.steps["loss"], (losses[0::2] + losses[1::2]) / 2, rtol=1e-5)
    layers = run.layers.pivot(index="step", columns="layer", values="norm").to_numpy()
    np.testing.assert_allclose(layers, [s["layers"] for s in seen["steps"]], rtol=1e-5)
    if clip is not None:
        np.testing.assert_allclose(run.steps["global_norm_post"], clipped(pre), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("clip", [None, f"global-norm:max={CAP}"])
def test_accelerate_on_two_cpu_processes_is_recorded_and_clipped_on_every_rank(tmp_path, write_script, clip):
    require("accelerate")
    script = write_script(ACCELERATE)
    command = ["profile"] if clip is None else ["run", "--clip", clip]
    result = run_cli(*command, "--every", "1", "--nproc-per-node", "2", "--out", "runs", str(script),
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    seen, pre = check_accelerate(tmp_path, clip, rank=0)
    other, other_pre = check_accelerate(tmp_path, clip, rank=1)  # rank 1 clips too, with the same norm
    np.testing.assert_allclose(other_pre, pre, rtol=1e-5)  # DDP averaged the gradients
    run = gradprobe.list_runs(tmp_path / "runs")[0]
    assert len(run.steps) == len(seen["steps"]) == 2  # each rank got half the batches
    np.testing.assert_allclose(run.steps["global_norm"], pre, rtol=1e-5)
    assert list(run.layer_table["name"]) == ["0.weight", "0.bias", "2.weight", "2.bias"]


FUNCTIONAL_CALL = NORM + """
import json
import torch
from torch.func import functional_call

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
params = {name: p.detach().clone().requires_grad_() for name, p in model.named_parameters()}
opt = torch.optim.SGD(params.values(), lr=0.01)
opt.register_step_post_hook(lambda o, a, k: seen[-1].update(used=norm([p.grad for p in params.values()])))
x, y = torch.randn(32, 4), 20 * torch.randn(32, 1)
seen = []
for _ in range(6):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(functional_call(model, params, (x,)), y)
    loss.backward()
    seen.append({"loss": loss.item(), "pre": norm([p.grad for p in params.values()]),
                 "layers": [float(torch.linalg.vector_norm(p.grad)) for p in params.values()]})
    opt.step()
json.dump(seen, open("seen.json", "w"))
"""


@pytest.mark.parametrize("clip", [None, f"global-norm:max={CAP}"])
def test_functional_call_loop_is_recorded_and_clipped(tmp_path, write_script, clip):
    result, run = run_against_seen(tmp_path, write_script(FUNCTIONAL_CALL), clip, steps=6)
    assert "warning" not in result.stderr
    # named by the keys of the dict functional_call takes (the module's own names), in its order
    assert list(run.layer_table["name"]) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert list(run.layer_table["group"]) == ["0", "0", "2", "2"]


def test_torch_func_grad_loop_without_backward_says_nothing_was_recorded(tmp_path, write_script):
    script = write_script("""
        import torch
        from torch.func import functional_call, grad

        model = torch.nn.Linear(4, 1)
        params = {k: v.detach() for k, v in model.named_parameters()}
        x, y = torch.randn(32, 4), torch.randn(32, 1)
        loss = lambda params: torch.nn.functional.mse_loss(functional_call(model, params, (x,)), y)
        for _ in range(5):
            g = grad(loss)(params)
            params = {k: params[k] - 0.1 * g[k] for k in params}
        print("trained")
    """)
    result = run_cli("profile", "--out", "runs", str(script), cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == "trained\n", result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("gradprobe: warning:")]
    assert len(warnings) == 1 and "no step recorded" in warnings[0]
    run = gradprobe.list_runs(tmp_path / "runs")[0]
    assert run.meta["warnings"] == [warnings[0].removeprefix("gradprobe: warning: ")] and len(run.steps) == 0


@pytest.mark.slow
def test_the_truth_benchmark_checks_a_gan_loop_against_its_independent_hook(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    out = tmp_path / "truth.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "truth" / "run.py"), "--only",
                             "dcgan_two_optimizers", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = json.loads(out.read_text())["loops"]
    assert row["steps_hook_vs_recorded"] == {"0": [20, 20], "1": [20, 20]}  # the loop steps D and G 20 times each
    assert row["max_rel_error_pre_clip"] <= 1e-5 and row["max_rel_error_used_vs_policy"] <= 1e-5
    # the cap, the median of both optimizers' norms, sits below every D step and above every G step
    assert row["clipped_share"] == [1.0, 0.0] and row["max_rel_error_post_clip"] <= 1e-5
    # per layer: 2 optimizers x 2 sampled steps (0, 10) x 4 parameters, every name found in its module
    assert (row["layer_rows_compared"], row["layer_names_missing"], row["layer_counts_match"]) == (16, 0, True)
    assert row["max_rel_error_layers"] <= 1e-5 and row["ok"]


@pytest.mark.slow
def test_the_truth_hook_measures_a_closure_step_at_its_first_evaluation(tmp_path):
    """LBFGS's pre-step gradient is stale: the hook wraps the closure, so the recorded first-evaluation
    gradient matches; under --clip nothing is clipped (LBFGS updates with later gradients)."""
    import subprocess
    import sys

    from conftest import REPO

    out = tmp_path / "truth.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "truth" / "run.py"), "--only",
                             "lbfgs_closure", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = json.loads(out.read_text())["loops"]
    assert row["steps_hook_vs_recorded"] == {"0": [6, 6]}
    assert row["max_rel_error_pre_clip"] <= 1e-5 and row["max_rel_error_used_vs_policy"] <= 1e-5
    assert row["layer_rows_compared"] == 6 and row["layer_names_exact"] == 6 and row["ok"]
