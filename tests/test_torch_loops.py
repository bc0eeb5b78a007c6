"""The PyTorch recorder, loop shape by loop shape, against statistics the tests compute themselves.

Each test trains a small model, takes its own copy of the gradients the update
is about to use (and of the parameters), computes L2 norm, max-abs, non-finite
count and parameter norm in float64, and compares them with what gradprobe
recorded (rtol 1e-5). The ``profile`` tests run unmodified scripts in a
subprocess; those scripts import :func:`snapshot` from this module and write
their own expectations to a JSON file.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pytest

from conftest import require, run_cli

torch = require("torch")
from torch import nn  # noqa: E402

import gradprobe  # noqa: E402
from gradprobe.pytorch.naming import held_names  # noqa: E402

TESTS_DIR = Path(__file__).resolve().parent
RTOL = 1e-5
norm = torch.linalg.vector_norm


# -- the tests' own bookkeeping ------------------------------------------------------------


@dataclass
class StepExpect:
    """What one step should record: per layer ``[norm, maxabs, nonfinite, param_norm]``."""

    loss: float
    global_norm: float
    layers: dict[str, list[float]]
    skipped: bool = False
    global_norm_post: float | None = None  # None: equal to global_norm (no clipping)


def grads_of(model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Copies of the gradients present on ``model``'s parameters, by parameter name."""
    return {prefix + n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def params_of(model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Copies of ``model``'s parameters, by parameter name."""
    return {prefix + n: p.detach().clone() for n, p in model.named_parameters()}


def _dense64(t: torch.Tensor) -> torch.Tensor:
    return (t.to_dense() if t.is_sparse else t).detach().double()


def snapshot(grads: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor], loss: torch.Tensor | float,
             skipped: bool = False, global_norm: float | None = None) -> StepExpect:
    """Expected statistics of one step, computed in float64 from copies of gradients and parameters.

    ``global_norm`` overrides the pre-clip global norm (when the loop clipped ``grads``).
    """
    layers = {}
    for name, grad in grads.items():
        g = _dense64(grad)
        layers[name] = [
            float(norm(g)),
            float(g.abs().max()),
            int((~torch.isfinite(g)).sum()),
            float(norm(_dense64(params[name]))),
        ]
    post = float(norm(torch.cat([_dense64(g).flatten() for g in grads.values()])))
    return StepExpect(
        loss=float(loss.detach() if isinstance(loss, torch.Tensor) else loss),
        global_norm=post if global_norm is None else float(global_norm),
        layers=layers,
        skipped=bool(skipped),
        global_norm_post=None if global_norm is None else post,
    )


def dump(path: str, expected: Mapping[str, list[StepExpect]]) -> None:
    """Write expectations (by optimizer label) to a JSON file, for the ``profile`` tests."""
    Path(path).write_text(json.dumps({k: [asdict(e) for e in v] for k, v in expected.items()}))


def load_expected(path: Path) -> dict[str, list[StepExpect]]:
    return {k: [StepExpect(**e) for e in v] for k, v in json.loads(path.read_text()).items()}


def close(actual, expected, what: str) -> None:
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                               rtol=RTOL, atol=0, equal_nan=True, err_msg=what)


def assert_recorded(run: gradprobe.Run, expected: list[StepExpect], optimizer: int = 0, every: int = 1) -> None:
    """The rows of ``optimizer`` hold exactly ``expected``: a step row per step, layer rows every ``every``."""
    steps = run.steps[run.steps["optimizer"] == optimizer]
    assert steps["step"].tolist() == list(range(len(expected)))
    close(steps["global_norm"], [e.global_norm for e in expected], "global_norm")
    close(steps["global_norm_post"], [e.global_norm if e.global_norm_post is None else e.global_norm_post
                                      for e in expected], "global_norm_post")
    close(steps["loss"], [e.loss for e in expected], "loss")
    assert steps["skipped"].tolist() == [e.skipped for e in expected]
    unclipped = np.array([e.global_norm_post is None for e in expected], dtype=bool)
    assert (steps["clip_scale"].to_numpy()[unclipped] == 1.0).all()
    assert np.isnan(steps["clip_threshold"].to_numpy()[unclipped]).all()
    layers = run.layers[run.layers["optimizer"] == optimizer]
    recorded = [s for s in range(len(expected)) if s % every == 0]
    assert sorted(layers["step"].unique().tolist()) == [s for s in recorded if expected[s].layers]
    for s in recorded:
        rows = layers[layers["step"] == s]
        names = rows["name"].astype(str).tolist()
        assert sorted(names) == sorted(expected[s].layers), f"layers recorded at step {s}"
        want = np.array([expected[s].layers[n] for n in names], dtype=np.float64).reshape(-1, 4)
        for j, column in enumerate(("norm", "maxabs", "nonfinite", "param_norm")):
            close(rows[column], want[:, j], f"{column} at step {s}")


def profile(tmp_path: Path, source: str, *options: str) -> tuple[str, gradprobe.Run, dict[str, list[StepExpect]]]:
    """Write ``source`` as train.py, run ``gradprobe profile OPTIONS train.py -- expected.json`` in ``tmp_path``;
    return the script's stdout, the run and the expectations the script wrote."""
    (tmp_path / "train.py").write_text(SCRIPT_HEADER.format(tests=str(TESTS_DIR)) + textwrap.dedent(source))
    result = run_cli("profile", "--out", "runs", "--name", "run", *options, "train.py", "--", "expected.json",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "internal error" not in result.stderr
    return result.stdout, gradprobe.load_run(tmp_path / "runs" / "run"), load_expected(tmp_path / "expected.json")


SCRIPT_HEADER = """\
import sys
import torch
from torch import nn
sys.path.insert(0, {tests!r})
from test_torch_loops import Net, batch, dump, gan_step, grads_of, mlp, params_of, snapshot
torch.manual_seed(0)
"""


def optimizer_of(run: gradprobe.Run, layer_name: str) -> int:
    """The optimizer index that records ``layer_name``."""
    table = run.layer_table
    return int(table.loc[table["name"] == layer_name, "optimizer"].item())


# -- models -------------------------------------------------------------------------------


class Net(nn.Module):
    """A small CNN: ``features.N`` convolutions and a ``classifier``."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        return self.classifier(self.features(x))


def batch(i: int, n: int = 8):
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def mlp(*sizes: int) -> nn.Sequential:
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _param_groups_adamw(model: nn.Module) -> torch.optim.Optimizer:
    # biases first, weights second: the optimizer's order is not the model's order
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    return torch.optim.AdamW([{"params": biases, "weight_decay": 0.0},
                              {"params": weights, "weight_decay": 0.1, "lr": 3e-3}], lr=1e-3)


OPTIMIZERS = {
    "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
    "adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-2),
    "adamw-groups": _param_groups_adamw,
}


# -- plain loops -------------------------------------------------------------------------


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_plain_loop_records_what_each_step_uses(tmp_path, make_optimizer):
    model = Net()
    opt = make_optimizer(model)
    expected = []
    with gradprobe.watch(model, out=tmp_path, every=1, flush_every=3) as rec:
        for i in range(7):
            x, y = batch(i)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            expected.append(snapshot(grads_of(model), params_of(model), loss))
            opt.step()
    run = gradprobe.load_run(rec.path)
    assert run.meta["status"] == "finished"
    assert_recorded(run, expected)


def test_layer_names_are_module_paths_in_model_order(tmp_path):
    model = Net()
    opt = _param_groups_adamw(model)
    with gradprobe.watch(model, out=tmp_path, every=1) as rec:
        x, y = batch(0)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    table = gradprobe.load_run(rec.path).layer_table
    named = list(model.named_parameters())
    assert table["name"].tolist() == [n for n, _ in named]
    assert table["name"].tolist()[:2] == ["features.0.weight", "features.0.bias"]
    assert table["id"].tolist() == list(range(len(named)))
    assert table["numel"].tolist() == [p.numel() for _, p in named]
    assert table["shape"].tolist() == [list(p.shape) for _, p in named]
    assert table["group"].tolist() == [n.split(".")[0] for n, _ in named]


def test_gradient_accumulation_records_the_accumulated_gradient_once_per_step(tmp_path):
    model, k = Net(), 3
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    expected, loss_sum = [], 0.0
    with gradprobe.watch(model, out=tmp_path, every=1, flush_every=4) as rec:
        for i in range(5 * k):
            x, y = batch(i)
            loss = nn.functional.cross_entropy(model(x), y) / k
            loss.backward()
            loss_sum += loss.item()
            if (i + 1) % k == 0:
                expected.append(snapshot(grads_of(model), params_of(model), loss_sum))
                opt.step()
                opt.zero_grad()
                loss_sum = 0.0
    run = gradprobe.load_run(rec.path)
    assert len(run.steps) == 5
    assert_recorded(run, expected)


# -- AMP ----------------------------------------------------------------------------------


AMP_OPTIMIZERS = {
    "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=1e-4),
    "fused-adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True),
}


def _amp_batch(i: int):
    g = torch.Generator().manual_seed(i)
    x, y = torch.randn(16, 6, generator=g), 10 * torch.randn(16, 2, generator=g)
    if i == 3:
        x[0, 0] = math.inf  # an overflow in the middle of training
    return x, y


def overflowing_scaler():
    """A scaler whose first step overflows; each backoff (2**124 -> 2**52 -> 2**-20) keeps the scaled
    gradients inside float32's range for squares, as fused optimizers measure them scaled."""
    return torch.amp.GradScaler("cpu", init_scale=2.0**124, backoff_factor=2.0**-72)


@pytest.mark.parametrize("make_optimizer", AMP_OPTIMIZERS.values(), ids=AMP_OPTIMIZERS.keys())
def test_grad_scaler_records_unscaled_gradients_and_skipped_steps(tmp_path, make_optimizer):
    model = mlp(6, 16, 2)
    opt = make_optimizer(model)
    scaler = overflowing_scaler()
    expected = []
    with gradprobe.watch(model, out=tmp_path, every=1, flush_every=3) as rec:
        for i in range(6):
            x, y = _amp_batch(i)
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y, reduction="sum")
            scaler.scale(loss).backward()
            scale = scaler.get_scale()
            grads = {n: g / scale for n, g in grads_of(model).items()}
            before = params_of(model)
            scaler.step(opt)
            scaler.update()
            skipped = all(torch.equal(before[n], p) for n, p in model.named_parameters())
            expected.append(snapshot(grads, before, loss, skipped=skipped))
    assert [e.skipped for e in expected] == [True, False, False, True, False, False]
    assert_recorded(gradprobe.load_run(rec.path), expected)


def test_grad_scaler_with_explicit_unscale_and_clipping(tmp_path):
    model = mlp(6, 16, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    scaler = overflowing_scaler()
    expected = []
    with gradprobe.watch(model, out=tmp_path, every=1, flush_every=4) as rec:
        for i in range(5):
            x, y = _amp_batch(i + 10)
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y, reduction="sum")
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            pre = norm(torch.cat([g.double().flatten() for g in grads_of(model).values()]))
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            before = params_of(model)
            scaler.step(opt)
            scaler.update()
            skipped = all(torch.equal(before[n], p) for n, p in model.named_parameters())
            expected.append(snapshot(grads_of(model), before, loss, skipped=skipped, global_norm=pre))
    assert [e.skipped for e in expected] == [True, False, False, False, False]
    run = gradprobe.load_run(rec.path)
    assert_recorded(run, expected)
    assert run.steps["clip_threshold"].tolist() == [1.0] * 5
    scales = [min(1.0, e.global_norm_post / e.global_norm) for e in expected[1:]]  # step 0 overflowed
    close(run.steps["clip_scale"][1:], scales, "clip_scale")


# -- several models and optimizers --------------------------------------------------------


def gan_step(netG, netD, optG, optD, i: int):
    """One GAN iteration; returns the losses of D and G (G's backward also fills D's gradients)."""
    g = torch.Generator().manual_seed(i)
    real, z = torch.randn(8, 6, generator=g), torch.randn(8, 4, generator=g)
    bce = nn.functional.binary_cross_entropy_with_logits
    fake = netG(z)
    optD.zero_grad()
    lossD = bce(netD(real), torch.ones(8, 1)) + bce(netD(fake.detach()), torch.zeros(8, 1))
    lossD.backward()
    yield lossD
    optD.step()
    optG.zero_grad()
    lossG = bce(netD(fake), torch.ones(8, 1))
    lossG.backward()
    yield lossG
    optG.step()


def test_two_models_two_optimizers_record_their_own_gradients(tmp_path):
    netG, netD = mlp(4, 16, 6), mlp(6, 16, 1)
    optG = torch.optim.Adam(netG.parameters(), lr=1e-3, betas=(0.5, 0.999))
    optD = torch.optim.Adam(netD.parameters(), lr=1e-3, betas=(0.5, 0.999))
    expected = {"D": [], "G": []}
    with gradprobe.watch({"netG": netG, "netD": netD}, out=tmp_path, every=1, flush_every=2) as rec:
        for i in range(4):
            steps = gan_step(netG, netD, optG, optD, i)
            lossD = next(steps)
            grads_d = grads_of(netD)
            expected["D"].append(snapshot(grads_of(netD, "netD."), params_of(netD, "netD."), lossD))
            lossG = next(steps)
            assert any(not torch.equal(p.grad, grads_d[n]) for n, p in netD.named_parameters())  # G's backward
            expected["G"].append(snapshot(grads_of(netG, "netG."), params_of(netG, "netG."), lossG))
            next(steps, None)
    run = gradprobe.load_run(rec.path)
    assert_gan_run(run, expected)


def assert_gan_run(run: gradprobe.Run, expected: dict[str, list[StepExpect]]) -> None:
    d, g = optimizer_of(run, "netD.0.weight"), optimizer_of(run, "netG.0.weight")
    assert d != g
    table = run.layer_table
    assert table.loc[table["optimizer"] == d, "name"].tolist() == list(expected["D"][0].layers)
    assert table.loc[table["optimizer"] == g, "name"].tolist() == list(expected["G"][0].layers)
    assert_recorded(run, expected["D"], optimizer=d)
    assert_recorded(run, expected["G"], optimizer=g)


GAN_SCRIPT = """
netG, netD = mlp(4, 16, 6), mlp(6, 16, 1)
optG = torch.optim.Adam(netG.parameters(), lr=1e-3, betas=(0.5, 0.999))
optD = torch.optim.Adam(netD.parameters(), lr=1e-3, betas=(0.5, 0.999))
expected = {"D": [], "G": []}
for i in range(3):
    steps = gan_step(netG, netD, optG, optD, i)
    lossD = next(steps)
    expected["D"].append(snapshot(grads_of(netD, "netD."), params_of(netD, "netD."), lossD))
    lossG = next(steps)
    expected["G"].append(snapshot(grads_of(netG, "netG."), params_of(netG, "netG."), lossG))
    next(steps, None)
dump(sys.argv[1], expected)
print("trained")
"""


def test_profile_gan_script_names_layers_by_variable(tmp_path):
    stdout, run, expected = profile(tmp_path, GAN_SCRIPT, "--every", "1")
    assert stdout == "trained\n"
    assert run.meta["status"] == "finished"
    assert_gan_run(run, expected)


# -- loops without an optimizer -----------------------------------------------------------


def test_manual_update_records_each_backward_pass(tmp_path):
    model = mlp(5, 8, 2)
    other = nn.Linear(3, 3)
    unrelated = torch.optim.SGD(other.parameters(), lr=0.1)  # alive, but it holds none of model's parameters
    expected = []
    with gradprobe.watch(model, out=tmp_path, every=1, flush_every=3) as rec:
        for i in range(5):
            g = torch.Generator().manual_seed(i)
            x, y = torch.randn(16, 5, generator=g), torch.randn(16, 2, generator=g)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            expected.append(snapshot(grads_of(model), params_of(model), loss))
            with torch.no_grad():
                for p in model.parameters():
                    p.data.add_(p.grad, alpha=-0.1)
                    p.grad = None
    assert unrelated.param_groups
    assert_recorded(gradprobe.load_run(rec.path), expected)


RAW_TENSOR_SCRIPT = """
w = torch.randn(5, 3, requires_grad=True)
b = torch.zeros(3, requires_grad=True)
expected = []
for i in range(6):
    x, y = torch.randn(16, 5), torch.randn(16, 3)
    loss = ((x @ w + b - y) ** 2).mean()
    loss.backward()
    expected.append(snapshot({"w": w.grad, "b": b.grad}, {"w": w, "b": b}, loss))
    dump(sys.argv[1], {"backward": expected})
    with torch.no_grad():
        w.add_(w.grad, alpha=-0.1)
        b -= 0.1 * b.grad
    w.grad.zero_()
    b.grad = None
print("done")
"""


@pytest.mark.parametrize("max_steps", [None, 4])
def test_profile_raw_leaf_tensors_without_optimizer(tmp_path, max_steps):
    limit = ["--max-steps", str(max_steps)] if max_steps else []
    stdout, run, expected = profile(tmp_path, RAW_TENSOR_SCRIPT, "--every", "1", *limit)
    assert stdout == ("" if max_steps else "done\n")
    assert run.meta["status"] == "finished"
    assert run.layer_table["name"].tolist() == ["w", "b"]
    # with --max-steps 4 the script ended in its 5th backward(), before writing a 5th expectation
    assert len(expected["backward"]) == (max_steps or 6)
    assert_recorded(run, expected["backward"])


def test_loose_tensors_are_named_by_the_dict_key_that_holds_them():
    gen = {"w": torch.zeros(1, requires_grad=True)}
    critic = {"w": torch.zeros(1, requires_grad=True), "b": torch.zeros(1, requires_grad=True)}
    bias = critic["b"]  # a dict key names it before a variable does
    extra = [torch.zeros(1, requires_grad=True)]
    alone = torch.zeros(1, requires_grad=True)
    tensors = [gen["w"], critic["w"], bias, extra[0], alone]
    names = held_names({id(t): t for t in tensors})
    assert list(names.values()) == ["gen.w", "critic.w", "b", "alone", "extra.0"]
    assert list(names) == [id(t) for t in (gen["w"], critic["w"], bias, alone, extra[0])]


# -- closure optimizers -------------------------------------------------------------------


def test_lbfgs_records_the_gradient_at_each_steps_starting_point(tmp_path):
    model = mlp(5, 8, 1)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(32, 5, generator=g), torch.randn(32, 1, generator=g)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4, history_size=5)
    names = [n for n, _ in model.named_parameters()]
    evaluations = []

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        evaluations.append(loss.item())
        return loss

    expected = []
    with gradprobe.watch(model, out=tmp_path, every=1, flush_every=2) as rec:
        for _ in range(4):
            loss = nn.functional.mse_loss(model(x), y)
            grads = torch.autograd.grad(loss, list(model.parameters()))
            expected.append(snapshot(dict(zip(names, grads)), params_of(model), loss))
            opt.step(closure)
    assert len(evaluations) > 2 * len(expected)  # several backward passes per step
    assert_recorded(gradprobe.load_run(rec.path), expected)


# -- shared, frozen and sparse parameters -------------------------------------------------


class TiedLM(nn.Module):
    """Input embedding tied to the output projection, a frozen layer and a layer left unused."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.frozen = nn.Linear(6, 6).requires_grad_(False)
        self.unused = nn.Linear(6, 6)
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        return self.head(torch.tanh(self.frozen(self.embed(tokens))))


def test_tied_parameters_once_frozen_and_unused_excluded(tmp_path):
    model = TiedLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)  # includes the frozen parameters
    expected = []
    with gradprobe.watch(model, out=tmp_path, every=1, flush_every=2) as rec:
        for i in range(3):
            tokens = torch.randint(0, 10, (4, 5), generator=torch.Generator().manual_seed(i))
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(tokens).reshape(-1, 10), tokens.reshape(-1))
            loss.backward()
            expected.append(snapshot(grads_of(model), params_of(model), loss))
            opt.step()
    assert list(expected[0].layers) == ["embed.weight"]
    run = gradprobe.load_run(rec.path)
    assert run.layer_table["name"].tolist() == ["embed.weight", "unused.weight", "unused.bias"]
    assert_recorded(run, expected)


@pytest.mark.parametrize("unfreeze", ["requires_grad", "add_param_group"])
def test_unfreezing_mid_training_keeps_each_layer_once(tmp_path, unfreeze):
    model = Net()
    model.features.requires_grad_(False)
    if unfreeze == "requires_grad":  # the optimizer holds every parameter from the start
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
    else:
        opt = torch.optim.SGD(model.classifier.parameters(), lr=0.05)
    expected = []
    with gradprobe.watch(model, out=tmp_path, every=1, flush_every=3) as rec:
        for i in range(4):
            if i == 2:
                model.features.requires_grad_(True)
                if unfreeze == "add_param_group":
                    opt.add_param_group({"params": list(model.features.parameters()), "lr": 0.01})
            x, y = batch(i)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            expected.append(snapshot(grads_of(model), params_of(model), loss))
            opt.step()
    assert [len(e.layers) for e in expected] == [4, 4, 8, 8]
    run = gradprobe.load_run(rec.path)
    assert sorted(run.layer_table["name"]) == sorted(n for n, _ in model.named_parameters())
    assert_recorded(run, expected)


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 8, sparse=True)
        self.head = nn.Linear(8, 2)

    def forward(self, tokens):
        return self.head(self.embed(tokens).mean(dim=1))


@pytest.mark.parametrize("optimizers", ["sgd", "sparse-adam+adam"])
def test_sparse_embedding_gradients(tmp_path, optimizers):
    model = Bag()
    if optimizers == "sgd":
        opts = [torch.optim.SGD(model.parameters(), lr=0.1)]
    else:
        opts = [torch.optim.SparseAdam(model.embed.parameters(), lr=1e-2),
                torch.optim.Adam(model.head.parameters(), lr=1e-2)]
    expected = [[] for _ in opts]
    with gradprobe.watch(model, out=tmp_path, every=1, flush_every=2) as rec:
        for i in range(3):
            tokens = torch.tensor([[1, 2, 2, 7], [7, 7, 3, 1 + i]])  # repeated rows: an uncoalesced gradient
            for opt in opts:
                opt.zero_grad()
            loss = nn.functional.cross_entropy(model(tokens), torch.tensor([0, 1]))
            loss.backward()
            assert model.embed.weight.grad.is_sparse
            grads, params = grads_of(model), params_of(model)
            for k, opt in enumerate(opts):
                mine = {id(q) for q in opt.param_groups[0]["params"]}
                own = {n: grads[n] for n, p in model.named_parameters() if id(p) in mine}
                expected[k].append(snapshot(own, params, loss))
            for opt in opts:
                opt.step()
    run = gradprobe.load_run(rec.path)
    for k, exp in enumerate(expected):
        assert_recorded(run, exp, optimizer=k)


# -- torch.compile ------------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_model(tmp_path):
    model = Net()
    compiled = torch.compile(model)
    opt = torch.optim.SGD(compiled.parameters(), lr=0.05)
    expected = []
    with gradprobe.watch(compiled, out=tmp_path, every=1, flush_every=2) as rec:
        for i in range(3):
            x, y = batch(i)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(compiled(x), y)
            loss.backward()
            expected.append(snapshot(grads_of(model), params_of(model), loss))
            opt.step()
    run = gradprobe.load_run(rec.path)
    assert run.layer_table["name"].tolist() == [n for n, _ in model.named_parameters()]
    assert_recorded(run, expected)


COMPILED_SCRIPT = """
net = Net()
model = torch.compile(net, backend="aot_eager")  # compiled forward and backward graphs, no C++ build
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
expected = []
for i in range(3):
    x, y = batch(i)
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    expected.append(snapshot(grads_of(net), params_of(net), loss))
    opt.step()
dump(sys.argv[1], {"opt": expected})
"""


@pytest.mark.slow
def test_profile_compiled_model_finds_the_original_names(tmp_path):
    _, run, expected = profile(tmp_path, COMPILED_SCRIPT, "--every", "1")
    assert run.layer_table["name"].tolist() == [n for n, _ in Net().named_parameters()]
    assert_recorded(run, expected["opt"])


# -- sampling and stopping ----------------------------------------------------------------


def test_every_n_records_layers_at_multiples_of_n_and_global_norm_always(tmp_path):
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    expected = []
    with gradprobe.watch(model, out=tmp_path, every=3, flush_every=4) as rec:
        for i in range(8):
            x, y = batch(i)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            expected.append(snapshot(grads_of(model), params_of(model), loss))
            opt.step()
    run = gradprobe.load_run(rec.path)
    assert sorted(run.layers["step"].unique()) == [0, 3, 6]
    assert_recorded(run, expected, every=3)


@pytest.mark.parametrize("loop", ["optimizer", "manual"])
def test_max_steps_ends_the_block_cleanly(tmp_path, loop):
    model = mlp(4, 4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01) if loop == "optimizer" else None
    steps_taken = 0
    with gradprobe.watch(model, out=tmp_path, every=1, max_steps=3) as rec:
        for _ in range(10):
            model(torch.randn(2, 4)).sum().backward()
            if opt is not None:
                opt.step()
                opt.zero_grad()
            steps_taken += 1
    run = gradprobe.load_run(rec.path)
    assert run.meta["status"] == "finished"
    assert run.steps["step"].tolist() == [0, 1, 2]
    assert steps_taken == (2 if opt is not None else 3)  # the 3rd step() stops the loop; or the 4th backward


EVERY_SCRIPT = """
model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
expected = []
for i in range(20):
    x, y = batch(i)
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    expected.append(snapshot(grads_of(model), params_of(model), loss))
    dump(sys.argv[1], {"opt": expected})
    opt.step()
print("all 20 steps")
"""


def test_profile_every_and_max_steps(tmp_path):
    stdout, run, expected = profile(tmp_path, EVERY_SCRIPT, "--every", "2", "--max-steps", "5",
                                    "--flush-every", "3")
    assert stdout == ""
    assert run.meta["status"] == "finished"
    assert run.meta["exit_code"] == 0
    assert len(expected["opt"]) == 5
    assert sorted(run.layers["step"].unique()) == [0, 2, 4]
    assert run.layer_table["name"].tolist()[0] == "features.0.weight"
    assert_recorded(run, expected["opt"], every=2)


# -- non-finite and low-precision gradients ----------------------------------------------


def test_nonfinite_gradients_are_counted_per_layer(tmp_path):
    model = mlp(5, 8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    expected = []
    with gradprobe.watch(model, out=tmp_path, every=1, flush_every=2) as rec:
        for i in range(3):
            opt.zero_grad()
            loss = model(torch.randn(4, 5)).pow(2).mean()
            loss.backward()
            if i == 0:
                model[0].weight.grad[0, :3] = math.nan
                model[0].weight.grad[1, 0] = math.inf
                model[2].bias.grad[1] = -math.inf
            expected.append(snapshot(grads_of(model), params_of(model), loss))
            opt.step()
    assert expected[0].layers["0.weight"][2] == 4
    assert expected[0].layers["2.bias"][2] == 1
    assert expected[0].layers["0.bias"][2] == 0
    run = gradprobe.load_run(rec.path)
    assert run.meta["status"] == "finished"
    assert_recorded(run, expected)


class LowPrecision(nn.Module):
    """Parameters whose gradients and values square past float16's range (65504)."""

    def __init__(self, dtype):
        super().__init__()
        self.w = nn.Parameter(torch.full((64,), 2.0, dtype=dtype))
        self.big = nn.Parameter(torch.full((64,), 1000.0, dtype=dtype))
        self.c = torch.full((64,), 300.0, dtype=dtype)

    def forward(self):
        return (self.w * self.c).sum() + (self.big * 1e-3).sum()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_norms_do_not_overflow(tmp_path, dtype):
    model = LowPrecision(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    expected = []
    with gradprobe.watch(model, out=tmp_path, every=1) as rec:
        for _ in range(2):
            opt.zero_grad()
            loss = model()
            loss.backward()
            assert model.w.grad.dtype == dtype
            expected.append(snapshot(grads_of(model), params_of(model), loss))
            opt.step()
    assert expected[0].layers["w"][0] > 2000 and expected[0].layers["big"][3] > 7000
    run = gradprobe.load_run(rec.path)
    assert np.isfinite(run.layers["norm"]).all() and np.isfinite(run.layers["param_norm"]).all()
    assert_recorded(run, expected)
