"""Live clipping: `gradprobe run --clip`, `--clip-from` and `watch(clip=...)` clip what the optimizer sees."""

from __future__ import annotations

import gc
import json
import math

import numpy as np
import pytest
import torch

import gradprobe
from conftest import run_cli

# The script records, independently of gradprobe, the pre-clip global norm right after
# backward() and the norm the optimizer receives inside its own step().
PROBE = """
import json, sys
import torch
torch.manual_seed(0)
seen = []

class ProbeSGD(torch.optim.SGD):
    def step(self, closure=None):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen[-1]["post"] = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        return super().step(closure)

model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
opt = ProbeSGD(model.parameters(), lr=float(sys.argv[1]))
x, y = torch.randn(64, 8), torch.randn(64, 1) * 10
for step in range(int(sys.argv[2])):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    pre = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    seen.append({"pre": float(pre), "loss": float(loss)})
    opt.step()
json.dump(seen, open("seen.json", "w"))
"""


def only_run(root):
    runs = gradprobe.list_runs(root)
    assert len(runs) == 1
    return runs[0]


def test_run_clip_global_norm_bounds_what_the_optimizer_sees(tmp_path, write_script):
    script = write_script(PROBE)
    result = run_cli("run", "--clip", "global-norm:max=0.5", "--out", "runs", str(script), "--", "0.01", "20",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    seen = json.loads((tmp_path / "seen.json").read_text())
    pre = np.array([s["pre"] for s in seen])
    post = np.array([s["post"] for s in seen])
    expected = pre * np.minimum(1.0, 0.5 / (pre + 1e-6))
    assert (pre > 0.5).sum() >= 10  # the policy really had work to do
    np.testing.assert_allclose(post, expected, rtol=1e-5)
    run = only_run(tmp_path / "runs")
    assert run.meta["clip"] == "global-norm:max=0.5,norm=2"
    assert "gradprobe: clipping with global-norm:max=0.5,norm=2\n" in result.stderr
    np.testing.assert_allclose(run.steps["global_norm"], pre, rtol=1e-5)
    np.testing.assert_allclose(run.steps["global_norm_post"], post, rtol=1e-5)
    np.testing.assert_allclose(run.steps["clip_scale"], np.minimum(1.0, 0.5 / (pre + 1e-6)), rtol=1e-5)
    np.testing.assert_allclose(run.steps["clip_threshold"], 0.5)
    np.testing.assert_allclose(run.steps["loss"], [s["loss"] for s in seen], rtol=1e-5)


def test_clip_from_recommendation_file(tmp_path, write_script):
    script = write_script(PROBE)
    (tmp_path / "recommendation.json").write_text(json.dumps(
        {"run": "x", "recommendations": [{"spec": "global-norm:max=0.25", "rationale": "test"}]}))
    result = run_cli("run", "--clip-from", "recommendation.json", "--out", "runs", str(script), "0.01", "5",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    seen = json.loads((tmp_path / "seen.json").read_text())
    pre = np.array([s["pre"] for s in seen])
    assert (pre > 0.25).all()
    np.testing.assert_allclose([s["post"] for s in seen], pre * np.minimum(1.0, 0.25 / (pre + 1e-6)), rtol=1e-5)
    assert only_run(tmp_path / "runs").meta["clip"] == "global-norm:max=0.25,norm=2"
    assert "gradprobe: clipping with global-norm:max=0.25,norm=2 (from recommendation.json)\n" in result.stderr


EXPLODING = """
import torch
torch.manual_seed(1)
model = torch.nn.Linear(8, 1, bias=False)
opt = torch.optim.SGD(model.parameters(), lr=0.05)  # lr x curvature (about 200) is far above 2: diverges
x = torch.randn(128, 8) * 10
y = x @ torch.randn(8, 1)
for step in range(60):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
print(float(loss))
"""


def test_clipping_stops_a_run_that_explodes(tmp_path, write_script):
    script = write_script(EXPLODING)
    unclipped = run_cli("profile", "--out", "plain", str(script), cwd=tmp_path)
    clipped = run_cli("run", "--clip", "global-norm:max=1.0", "--out", "clipped", str(script), cwd=tmp_path)
    assert unclipped.returncode == clipped.returncode == 0, (unclipped.stderr, clipped.stderr)
    assert not math.isfinite(float(unclipped.stdout)) or float(unclipped.stdout) > 1e6
    assert math.isfinite(float(clipped.stdout)) and float(clipped.stdout) < 100
    steps = only_run(tmp_path / "clipped").steps
    assert (steps["global_norm_post"] <= 1.0 + 1e-5).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--clip", "global-norm:mx=1"], "global-norm"),
        (["--clip", "nosuch:max=1"], "nosuch"),
        (["--clip", "global-norm:max=-1"], "max"),
        (["--clip-from", "missing.json"], "missing.json: not found"),
        (["--clip-from", "bad.json"], "bad.json: not valid JSON"),
        (["--clip-from", "empty.json"], "non-empty 'recommendations'"),
        ([], "give --clip SPEC, --clip-from FILE or --skip-samples FILE"),
        (["--clip", "value:max=1", "--clip-from", "bad.json"], "not both"),
        (["--skip-samples", "missing.json"], "missing.json: no such file"),
        (["--skip-samples", "bad.json"], "bad.json: not valid JSON"),
        (["--skip-samples", "empty.json"], "non-empty 'loaders'"),
    ],
)
def test_bad_clip_input_never_starts_training(tmp_path, write_script, args, message):
    script = write_script("open('started', 'w').write('1')\n")
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "empty.json").write_text('{"recommendations": []}')
    result = run_cli("run", *args, str(script), cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "started").exists()


def _train(model, opt, batches, accumulate=1, scaler=None):
    for x, y in batches:
        opt.zero_grad()
        for _ in range(accumulate):
            loss = torch.nn.functional.mse_loss(model(x), y) / accumulate
            (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()


class Seen:
    """Records the gradients the optimizer receives, through a step pre-hook registered after gradprobe's,
    and each gradient as backward() left it, through a hook gradprobe does not touch."""

    def __init__(self, opt):
        self.norms = []
        self.used: list[list[torch.Tensor]] = []
        self.pre: list[list[torch.Tensor]] = []
        self._accumulated: dict[int, torch.Tensor] = {}
        self.params = [p for g in opt.param_groups for p in g["params"]]
        for p in self.params:
            p.register_post_accumulate_grad_hook(lambda p: self._accumulated.update({id(p): p.grad.detach().clone()}))
        self.handle = opt.register_step_pre_hook(self)

    def __call__(self, opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        self.used.append([p.grad.detach().clone() for p in self.params])
        self.pre.append([self._accumulated[id(p)] for p in self.params])


def _batches(n=12, scale=10.0):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(32, 6, generator=g), scale * torch.randn(32, 1, generator=g)) for _ in range(n)]


def scaler_scale(use_scaler: bool) -> float:
    """The GradScaler's scale (constant over these short runs: no overflow, no growth before 2,000 steps)."""
    return 1024.0 if use_scaler else 1.0


@pytest.mark.parametrize("accumulate, use_scaler", [(1, False), (3, False), (1, True)])
def test_watch_clip_applies_to_the_gradient_the_update_uses(tmp_path, accumulate, use_scaler):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=scaler_scale(True)) if use_scaler else None
    with gradprobe.watch(model, out=tmp_path, every=1, clip="layer-norm:max=0.3") as rec:
        seen = Seen(opt)
        _train(model, opt, _batches(), accumulate, scaler)
    run = gradprobe.load_run(rec.path)
    layers = run.layers
    # layer-norm: every parameter's gradient norm is at most 0.3 after clipping; the recorded
    # per-layer norms are pre-clip, so the expected global post-clip norm follows from them.
    expected_post = layers.assign(post=np.minimum(layers["norm"], layers["norm"] * 0.3 / (layers["norm"] + 1e-6))) \
        .groupby("step")["post"].apply(lambda s: math.sqrt((s.astype(np.float64) ** 2).sum()))
    np.testing.assert_allclose(seen.norms, expected_post.to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(run.steps["global_norm_post"], expected_post.to_numpy(), rtol=1e-5)
    assert (layers["norm"] > 0.3).any()
    unscale = 1 / scaler_scale(use_scaler)
    for pre, used in zip(seen.pre, seen.used):  # each layer's gradient is the policy's result, not just bounded
        for g, u in zip(pre, used):
            g = g * unscale
            torch.testing.assert_close(u, g * min(1.0, 0.3 / (float(torch.linalg.vector_norm(g)) + 1e-6)),
                                       rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fused", [False, True])
def test_skip_policy_leaves_parameters_and_optimizer_state_untouched(tmp_path, fused):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=fused)
    batches = _batches(n=40, scale=1.0)
    spike = 30
    x, y = batches[spike]
    batches[spike] = (x, y * 1e4)  # a loss spike far beyond the rolling mean + 3 std
    snapshots = []
    with gradprobe.watch(model, out=tmp_path, clip="skip:sigma=3,window=20") as rec:
        for i, (x, y) in enumerate(batches):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x.narrow(1, 0, 4)), y).backward()
            before = [p.detach().clone() for p in model.parameters()]
            state_step = [float(opt.state[p]["step"]) if p in opt.state else 0.0 for p in model.parameters()]
            opt.step()
            snapshots.append((before, state_step))
            if i == spike:
                after = [p.detach().clone() for p in model.parameters()]
                after_step = [float(opt.state[p]["step"]) for p in model.parameters()]
    steps = gradprobe.load_run(rec.path).steps
    assert list(steps.index[steps["skipped"]]) == [spike]
    before, step_before = snapshots[spike]
    for b, a in zip(before, after):
        assert torch.equal(a, b)
    assert after_step == step_before
    assert steps["global_norm_post"][spike] == 0


@pytest.fixture
def optimizer_garbage():
    """An optimizer nobody holds any more, kept alive only by a reference cycle until the next collection."""
    gc.disable()
    optimizer = torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=0.1)
    optimizer.cycle = optimizer
    del optimizer
    yield
    gc.enable()


def test_manual_update_loop_is_clipped_after_backward(tmp_path, optimizer_garbage):
    torch.manual_seed(0)
    w = torch.randn(5, requires_grad=True)
    x, y = torch.randn(64, 5), 50 * torch.randn(64)
    pre, used = [], []  # the gradient as backward() accumulated it, and as the update used it
    w.register_post_accumulate_grad_hook(lambda p: pre.append(p.grad.detach().clone()))
    with gradprobe.watch(None, out=tmp_path, clip="global-norm:max=0.1") as rec:
        for _ in range(5):
            w.grad = None
            torch.nn.functional.mse_loss(x @ w, y).backward()
            used.append(w.grad.detach().clone())
            with torch.no_grad():
                w.add_(w.grad, alpha=-0.1)
    pre_norms = np.array([float(torch.linalg.vector_norm(g)) for g in pre])
    assert len(pre) == 5 and (pre_norms > 0.1).all()
    for g, u, n in zip(pre, used, pre_norms):  # the policy's result, direction kept, not just a bound
        torch.testing.assert_close(u, g * min(1.0, 0.1 / (n + 1e-6)), rtol=1e-5, atol=0)
    steps = gradprobe.load_run(rec.path).steps
    np.testing.assert_allclose(steps["global_norm"], pre_norms, rtol=1e-5)
    np.testing.assert_allclose(steps["global_norm_post"], [float(torch.linalg.vector_norm(u)) for u in used],
                               rtol=1e-5)


def test_closure_optimizer_is_recorded_but_not_clipped_and_says_so(tmp_path, write_script):
    script = write_script("""
        import torch
        model = torch.nn.Linear(3, 1)
        opt = torch.optim.LBFGS(model.parameters(), max_iter=3)
        x, y = torch.randn(16, 3), torch.randn(16, 1)
        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss
        for _ in range(2):
            opt.step(closure)
    """)
    result = run_cli("run", "--clip", "global-norm:max=1e-9", "--out", "runs", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("recorded but not clipped") == 1
    assert len(only_run(tmp_path / "runs").steps) == 2
