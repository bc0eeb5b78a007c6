"""``gradprobe apply``: writing a clip policy into a training script's source.

The patched scripts are run (one subprocess for all the PyTorch ones, one for
the Keras ones) and the gradients their optimizers receive are checked
against the policy computed here, independently of gradprobe; one patched
script is also profiled, to check what gradprobe records of the written clip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gradprobe import load_run
from gradprobe.errors import GradprobeError
from gradprobe.source_patch import PatchRefused, SourcePatch, patch_source
from conftest import run_cli
from writeup_snippets import CLIP_HELPER

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def patch(source: str, spec: str) -> str:
    """The patched text of ``source`` (dedented)."""
    return patch_source(textwrap.dedent(source), spec, "train.py").after


def changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    """The lines a patch removed and the lines it added, from its unified diff."""
    lines = SourcePatch("x.py", "", before, after).diff().splitlines()[2:]
    removed = [line[1:] for line in lines if line.startswith("-")]
    added = [line[1:] for line in lines if line.startswith("+")]
    return removed, added


def refusal(source: str, spec: str) -> str:
    """The one-line message of the refusal to patch ``source``."""
    with pytest.raises(GradprobeError) as info:
        patch_source(textwrap.dedent(source), spec, "train.py")
    return str(info.value)


# -- scripts -------------------------------------------------------------------------------

# The gradient norm jumps every third step (global L2 ~4-5, max-abs ~1.3-2.2), the
# other steps are small (~0.04): thresholds between the two clip some steps only.
LOOP = '''\
"""A small regression whose gradient norm jumps every third step."""
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(32, 4), torch.randn(32, 1)

for step in range(12):
    optimizer.zero_grad()
    weight = 20.0 if step % 3 == 0 else 0.2  # every third batch is a spike
    loss = weight * ((model(x) - y) ** 2).mean()
    loss.backward()

    # update
    optimizer.step()
'''

SCALER_LOOP = '''\
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
x, y = torch.randn(32, 4), torch.randn(32, 1)

for step in range(12):
    optimizer.zero_grad()
    weight = 20.0 if step % 3 == 0 else 0.2
    loss = weight * ((model(x) - y) ** 2).mean()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
'''

# Gradient accumulation over 4 batches with a GradScaler; the script clips after every
# backward (the scaled, partial gradient): the clip must move to the stepping iteration.
ACCUMULATION_LOOP = '''\
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
accumulate = 4

for step in range(12):
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    weight = 20.0 if (step // accumulate) % 2 == 0 else 0.2
    loss = weight * ((model(x) - y) ** 2).mean() / accumulate
    scaler.scale(loss).backward()
    # keep the gradients in check
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    if (step + 1) % accumulate == 0:
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
'''

TWO_MODULES_LOOP = '''\
import torch
from torch import nn

torch.manual_seed(0)
encoder, head = nn.Linear(4, 8), nn.Linear(8, 1)
optimizer = torch.optim.SGD(list(encoder.parameters()) + list(head.parameters()), lr=0.01)
x, y = torch.randn(32, 4), torch.randn(32, 1)

for step in range(12):
    optimizer.zero_grad()
    weight = 20.0 if step % 3 == 0 else 0.2
    loss = weight * ((head(torch.tanh(encoder(x))) - y) ** 2).mean()
    loss.backward()
    optimizer.step()
'''

CLASS_LOOP = '''\
import torch
from torch import nn


class Trainer:
    def __init__(self):
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)

    def train_step(self, x, y, weight):
        self.opt.zero_grad()
        loss = weight * ((self.model(x) - y) ** 2).mean()
        loss.backward()
        self.opt.step()


torch.manual_seed(0)
trainer = Trainer()
x, y = torch.randn(32, 4), torch.randn(32, 1)
for step in range(12):
    trainer.train_step(x, y, 20.0 if step % 3 == 0 else 0.2)
'''

# Two optimizers (a GAN): each is clipped on its own parameters, with its own policy state.
GAN_LOOP = '''\
import torch
from torch import nn

torch.manual_seed(0)
generator = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 4))
critic = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3)
opt_d = torch.optim.Adam(critic.parameters(), lr=1e-3)
real = torch.randn(32, 4)

for step in range(12):
    weight = 20.0 if step % 3 == 0 else 0.2
    z = torch.randn(32, 2)
    opt_d.zero_grad()
    loss_d = weight * (critic(generator(z).detach()) - critic(real)).mean()
    loss_d.backward()
    opt_d.step()

    opt_g.zero_grad()
    loss_g = -weight * critic(generator(z)).mean()
    loss_g.backward()
    opt_g.step()
'''

# The CNN write-up's loop: SGD with momentum and a clip call optimizers do not have.
MISTAKEN_CLIP_LOOP = '''\
import torch
import torch.nn as nn
import torch.optim as optim

torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
criterion = nn.CrossEntropyLoss()
optimizer = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
train_loader = [(torch.randn(8, 3, 8, 8) * (30.0 if i % 3 == 0 else 0.3), torch.randint(0, 10, (8,)))
                for i in range(12)]

for epoch in range(1):
    for i, data in enumerate(train_loader, 0):
        inputs, labels = data

        # zero the parameter gradients
        optimizer.zero_grad()

        # forward + backward + optimize
        outputs = net(inputs)
        loss = criterion(outputs, labels)
        loss.backward()

        # clip the gradients
        optimizer.clip_grad_norm_(net.parameters(), max_norm=0.5)

        # optimize
        optimizer.step()
'''

# The MNIST write-up's loop: its clip helper consumes the parameter generator and clips nothing.
CLIP_HELPER_LOOP = '''\
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim


''' + CLIP_HELPER + '''

torch.manual_seed(0)
model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 16), nn.ReLU(), nn.Linear(16, 10))
criterion = nn.CrossEntropyLoss()
optimizer = optim.SGD(model.parameters(), lr=0.01)
trainloader = [(torch.randn(8, 1, 28, 28) * (10.0 if i % 3 == 0 else 0.01), torch.randint(0, 10, (8,)))
               for i in range(12)]

for epoch in range(1):
    running_loss = 0.0
    for i, data in enumerate(trainloader, 0):
        inputs, labels = data
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = criterion(outputs, labels)
        loss.backward()
        norm = gradient_clipping(model, max_norm=1.0)
        optimizer.step()
        running_loss += loss.item()
'''

# The CIFAR example's shape: the script clips behind a condition, at a threshold (0.01) that
# clips every step; once a policy is applied, that policy alone must be in force.
GUARDED_CLIP_LOOP = LOOP.replace(
    "    # update\n",
    "    max_norm = 0.01\n"
    "    if max_norm > 0:\n"
    "        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=max_norm)\n"
    "    # update\n")

# The CIFAR example itself (its conditional clip at --max-norm 0.5).
CIFAR_EXAMPLE = (EXAMPLES / "cifar_sgd_torch.py").read_text()

# Runs scripts under a recorder: after every backward, each optimizer's gradients as
# computed (before any clipping); before every optimizer step, the gradients it receives.
HARNESS = '''\
import runpy
import sys

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

record = {}
optimizers = []


def _params(optimizer):
    return [p for group in optimizer.param_groups for p in group["params"]]


def _grads(optimizer):
    return [None if p.grad is None else p.grad.detach().clone() for p in _params(optimizer)]


def _tracking_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    optimizers.append(self)


def _recording_backward(self, *args, **kwargs):
    _backward(self, *args, **kwargs)
    record["backward"].append([_grads(o) for o in optimizers])


def _before_step(optimizer, args, kwargs):
    index = next(i for i, o in enumerate(optimizers) if o is optimizer)
    record["steps"].append((len(record["backward"]) - 1, index, _grads(optimizer)))


_init = torch.optim.Optimizer.__init__
_backward = torch.Tensor.backward
torch.optim.Optimizer.__init__ = _tracking_init
torch.Tensor.backward = _recording_backward
register_optimizer_step_pre_hook(_before_step)

out, scripts = sys.argv[1], sys.argv[2:]
results = {}
for script in scripts:
    record.update(backward=[], steps=[])
    optimizers.clear()
    sys.argv = [script]
    runpy.run_path(script, run_name="__main__")
    results[script] = {"backward": list(record["backward"]), "steps": list(record["steps"])}
torch.save(results, out)
'''

# (case, script, spec) run by the PyTorch harness.
TORCH_CASES = [
    ("global-l2", LOOP, "global-norm:max=1"),
    ("global-inf", LOOP, "global-norm:max=0.5,norm=inf"),
    ("value", LOOP, "value:max=0.5"),
    ("layer-norm", CLASS_LOOP, "layer-norm:max=1"),
    ("autoclip", TWO_MODULES_LOOP, "autoclip:p=50"),
    ("skip", LOOP, "global-norm:max=1+skip:sigma=1,window=2"),
    ("scaler", SCALER_LOOP, "global-norm:max=1"),
    ("accumulation", ACCUMULATION_LOOP, "global-norm:max=1"),
    ("two-optimizers", GAN_LOOP, "autoclip:p=50"),
    ("mistaken-clip", MISTAKEN_CLIP_LOOP, "global-norm:max=5"),
    ("clip-helper", CLIP_HELPER_LOOP, "global-norm:max=1"),
    ("guarded-clip", GUARDED_CLIP_LOOP, "global-norm:max=1"),
]
# Which backward calls each case steps after (default: every one), and its GradScaler's constant scale.
ACCUMULATE = {"accumulation": 4}
SCALE = {"scaler": 1024.0, "accumulation": 1024.0}


@pytest.fixture(scope="module")
def torch_runs(tmp_path_factory) -> dict[str, dict]:
    """Each case's script patched, then all run in one subprocess; their records by case."""
    import torch

    folder = tmp_path_factory.mktemp("apply-runs")
    scripts = []
    for case, source, spec in TORCH_CASES:
        path = folder / f"{case}.py"
        path.write_text(patch_source(source, spec, path.name).after)
        scripts.append(str(path))
    out = folder / "records.pt"
    harness = folder / "harness.py"
    harness.write_text(HARNESS)
    done = subprocess.run([sys.executable, str(harness), str(out), *scripts], cwd=folder, capture_output=True,
                          text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    records = torch.load(out)
    return {case: records[script] for (case, _, _), script in zip(TORCH_CASES, scripts)}


# -- the policies, computed here -----------------------------------------------------------

EPS = 1e-6


def as_arrays(grads) -> list[np.ndarray]:
    return [g.double().numpy() for g in grads]


def global_l2(grads: list[np.ndarray]) -> float:
    return float(np.sqrt(sum((g ** 2).sum() for g in grads)))


def clip_global(grads, max_norm: float, norm: float) -> list[np.ndarray]:
    scale = max_norm / (norm + EPS) if norm > max_norm else 1.0
    return [g * scale for g in grads]


def expected_clipped(spec: str, pre: list[np.ndarray], history: list[float]) -> list[np.ndarray]:
    """``pre`` clipped by ``spec``; ``history`` holds this optimizer's pre-clip norms so far, the current one last."""
    if spec.startswith("global-norm:max=") and "," not in spec:
        return clip_global(pre, float(spec.split("=")[1]), global_l2(pre))
    if spec == "global-norm:max=0.5,norm=inf":
        return clip_global(pre, 0.5, max(float(np.abs(g).max()) for g in pre))
    if spec == "value:max=0.5":
        return [np.clip(g, -0.5, 0.5) for g in pre]
    if spec == "layer-norm:max=1":
        return [clip_global([g], 1.0, float(np.linalg.norm(g)))[0] for g in pre]
    if spec == "autoclip:p=50":
        return clip_global(pre, float(np.percentile(history, 50)), global_l2(pre))
    raise AssertionError(spec)


def expected_skips(norms: list[float], sigma: float, window: int) -> list[bool]:
    """skip:sigma,window: skip when the norm exceeds mean + sigma * std of the last kept norms (full window)."""
    kept: list[float] = []
    skips = []
    for norm in norms:
        recent = kept[-window:]
        skip = len(recent) >= window and norm > np.mean(recent) + sigma * np.std(recent)
        skips.append(bool(skip))
        if not skip:
            kept.append(norm)
    return skips


@pytest.mark.parametrize("case, spec", [(c, s) for c, _, s in TORCH_CASES if c != "skip"])
def test_patched_script_steps_with_gradients_clipped_by_the_policy(torch_runs, case, spec):
    backward, steps = torch_runs[case]["backward"], torch_runs[case]["steps"]
    optimizers = len(backward[0])
    every = ACCUMULATE.get(case, 1)
    # One step per optimizer per stepping backward, each right after the backward of its own loss.
    assert [index for index, _, _ in steps] == [i for i in range(len(backward)) if (i + 1) % every == 0]
    assert len(steps) * every == 12 * optimizers
    history: dict[int, list[float]] = {}
    clipped = 0
    for index, optimizer, received in steps:
        pre = [g / SCALE.get(case, 1.0) for g in as_arrays(backward[index][optimizer])]
        history.setdefault(optimizer, []).append(global_l2(pre))
        expected = expected_clipped(spec, pre, history[optimizer])
        for got, want in zip(as_arrays(received), expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
        clipped += not all(np.allclose(e, p) for e, p in zip(expected, pre))
    assert 0 < clipped < len(steps), "the policy should clip some steps and not others"


def test_patched_skip_policy_skips_exactly_the_spiking_steps_and_clips_the_others(torch_runs):
    record = torch_runs["skip"]
    norms = [global_l2(as_arrays(grads[0])) for grads in record["backward"]]
    skips = expected_skips(norms, sigma=1.0, window=2)
    stepped = [index for index, _, _ in record["steps"]]
    assert stepped == [i for i, skip in enumerate(skips) if not skip]
    assert any(skips) and any(norms[i] > 1.0 for i in stepped)
    for index, _, received in record["steps"]:
        pre = as_arrays(record["backward"][index][0])
        for got, want in zip(as_arrays(received), clip_global(pre, 1.0, norms[index]), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)


def test_gradprobe_records_the_written_clip_of_an_accumulation_loop(tmp_path, torch_runs):
    script = tmp_path / "train.py"
    script.write_text(ACCUMULATION_LOOP)
    applied = run_cli("apply", "train.py", "--clip", "global-norm:max=1", "--write", cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    profiled = run_cli("profile", "--out", "runs", "--name", "acc", "train.py", cwd=tmp_path,
                       env={"OMP_NUM_THREADS": "1"})
    assert profiled.returncode == 0, profiled.stderr
    steps = load_run(tmp_path / "runs" / "acc").steps
    # The pre-clip norms gradprobe recorded are the accumulated, unscaled ones computed here.
    record = torch_runs["accumulation"]
    pre = [global_l2([g / SCALE["accumulation"] for g in as_arrays(record["backward"][index][0])])
           for index, _, _ in record["steps"]]
    np.testing.assert_allclose(steps["global_norm"], pre, rtol=1e-5)
    np.testing.assert_allclose(steps["global_norm_post"], np.minimum(pre, 1.0), rtol=1e-5)
    assert (steps["clip_threshold"] == 1.0).all() and (steps["clip_scale"] < 1).sum() == 2


# -- what the patch writes -----------------------------------------------------------------

def test_global_norm_inserts_one_plain_torch_line_and_keeps_everything_else():
    after = patch(LOOP, "global-norm:max=1")
    removed, added = changed_lines(LOOP, after)
    assert removed == []
    assert added == ["    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)"]
    # The comment above the step stays above the clip and the step.
    assert "    # update\n    torch.nn.utils.clip_grad_norm_(" in after
    assert "gradprobe" not in after


def test_inf_norm_and_value_policies_write_the_matching_torch_calls():
    assert changed_lines(LOOP, patch(LOOP, "global-norm:max=0.5,norm=inf"))[1] == [
        '    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5, norm_type=float("inf"))']
    assert changed_lines(LOOP, patch(LOOP, "value:max=0.25"))[1] == [
        "    torch.nn.utils.clip_grad_value_(model.parameters(), clip_value=0.25)"]


def test_other_policies_create_a_clipper_once_after_the_optimizer():
    after = patch(LOOP, "autoclip:p=10")
    _, added = changed_lines(LOOP, after)
    assert added == [
        "import gradprobe",
        '_gradprobe_clip = gradprobe.clipper("autoclip:p=10,warmup=0,window=1000")',
        "    _gradprobe_clip(model.parameters())",
    ]
    lines = after.splitlines()
    assert lines.index("import gradprobe") == lines.index("from torch import nn") + 1
    assert lines[lines.index(added[1]) - 1].startswith("optimizer = torch.optim.SGD(")


def test_skip_policies_step_through_the_clipper():
    _, added = changed_lines(LOOP, patch(LOOP, "zclip:z=2.5+skip:sigma=6"))
    assert added[-2:] == ["    _gradprobe_clip(model.parameters())", "    _gradprobe_clip.step(optimizer)"]
    assert "    optimizer.step()" in changed_lines(LOOP, patch(LOOP, "zclip:z=2.5+skip:sigma=6"))[0]


def test_parameters_come_from_the_optimizer_unless_it_was_built_from_one_visible_model():
    assert "clip_grad_norm_(model.parameters()," in patch(LOOP, "global-norm:max=1")
    assert "clip_grad_norm_(self.model.parameters()," in patch(CLASS_LOOP, "global-norm:max=1")
    two = patch(TWO_MODULES_LOOP, "global-norm:max=1")
    assert 'clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_norm=1.0)' in two
    # A model that is not the same variable where the step happens is not trusted.
    shadowed = patch('''
        import torch
        model = torch.nn.Linear(2, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)

        def train(model, batches):
            for x in batches:
                model(x).sum().backward()
                opt.step()
        ''', "global-norm:max=1")
    assert 'clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], max_norm=1.0)' in shadowed


def test_attribute_optimizer_gets_its_clipper_on_the_same_object():
    after = patch(CLASS_LOOP, "layer-norm:max=1")
    _, added = changed_lines(CLASS_LOOP, after)
    assert added == ["import gradprobe", '        self._gradprobe_clip = gradprobe.clipper("layer-norm:max=1")',
                     "        self._gradprobe_clip(self.model.parameters())"]


def test_several_optimizers_each_get_their_own_clipper():
    source = textwrap.dedent('''
        import torch
        from torch import nn, optim

        generator, critic = nn.Linear(2, 2), nn.Linear(2, 1)
        opt_g = optim.Adam(generator.parameters())
        opt_d = optim.Adam(critic.parameters())
        for x in range(3):
            critic(generator(x)).sum().backward()
            opt_d.step()
            generator(x).sum().backward()
            opt_g.step()
        ''')
    _, added = changed_lines(source, patch(source, "zclip"))
    spec = "zclip:z=2.5,alpha=0.97,warmup=25,mode=reciprocal"
    assert added == ["import gradprobe", f'_gradprobe_clip_opt_g = gradprobe.clipper("{spec}")',
                     f'_gradprobe_clip_opt_d = gradprobe.clipper("{spec}")',
                     "    _gradprobe_clip_opt_d(critic.parameters())", "    _gradprobe_clip_opt_g(generator.parameters())"]


def test_grad_scaler_step_gets_unscale_before_the_clip_unless_the_script_unscales():
    _, added = changed_lines(SCALER_LOOP, patch(SCALER_LOOP, "global-norm:max=1"))
    assert added == ["    scaler.unscale_(optimizer)",
                     "    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)"]
    unscaled = SCALER_LOOP.replace("    scaler.step(optimizer)\n",
                                   "    scaler.unscale_(optimizer)\n    print('unscaled')\n    scaler.step(optimizer)\n")
    _, added = changed_lines(unscaled, patch(unscaled, "global-norm:max=1"))
    assert added == ["    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)"]
    # A clip of the still-scaled gradients moves below the unscale.
    late = unscaled.replace("    scaler.unscale_(optimizer)\n",
                            "    torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)\n    scaler.unscale_(optimizer)\n")
    assert patch(late, "global-norm:max=1") == unscaled.replace(
        "    scaler.unscale_(optimizer)\n",
        "    scaler.unscale_(optimizer)\n    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n")


def test_accumulation_clips_only_on_the_stepping_iteration():
    source = textwrap.dedent('''\
        import torch
        model = torch.nn.Linear(2, 1)
        opt = torch.optim.AdamW(model.parameters())
        for i, x in enumerate(batches):
            (model(x).sum() / 4).backward()
            if (i + 1) % 4 == 0:
                opt.step()
                opt.zero_grad()
        ''')
    removed, added = changed_lines(source, patch(source, "global-norm:max=1"))
    assert removed == []
    assert added == ["        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)"]
    assert patch(source, "global-norm:max=1").index("max_norm=1.0)\n        opt.step()") > 0


def test_a_clip_after_every_accumulated_backward_moves_to_the_stepping_iteration():
    removed, added = changed_lines(ACCUMULATION_LOOP, patch(ACCUMULATION_LOOP, "global-norm:max=1"))
    assert removed == ["    # keep the gradients in check", "    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)"]
    assert added == ["        scaler.unscale_(optimizer)", "        # keep the gradients in check",
                     "        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)"]
    # In an else branch, the clip after the backward also moves (once), not duplicated.
    source = textwrap.dedent('''\
        import torch
        opt = torch.optim.SGD(model.parameters())
        for i, x in enumerate(batches):
            model(x).sum().backward()
            torch.nn.utils.clip_grad_value_(model.parameters(), 3)
            if i % 4:
                continue
            else:
                opt.step()
        ''')
    after = patch(source, "value:max=1")
    assert after.count("clip_grad_value_") == 1
    assert "    else:\n        torch.nn.utils.clip_grad_value_(model.parameters(), 1.0)\n        opt.step()" in after


def test_comments_and_formatting_survive_untouched():
    source = textwrap.dedent('''\
        #!/usr/bin/env python
        # -*- coding: utf-8 -*-
        import torch   # the framework
        from torch import (nn,
                           optim)

        model = nn.Linear( 2,1 )   ;   other = 3
        opt = optim.SGD(
            model.parameters(),  # all of them
            lr = 0.1 ,
        )
        for batch in [torch.ones(2)]:
            loss = model( batch ).sum()   # odd spacing
            loss.backward()  ;  print( 'backward done' )
            if True :
                # clip? step!
                opt.step()      # trailing comment
        ''')
    after = patch(source, "global-norm:max=1")
    removed, added = changed_lines(source, after)
    assert removed == []
    assert added == ["        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)"]
    assert after.replace(added[0] + "\n", "") == source


def test_existing_clip_before_the_step_is_updated_not_duplicated():
    source = textwrap.dedent('''\
        import torch
        model = torch.nn.Linear(2, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for x in [torch.ones(2)]:
            model(x).sum().backward()
            # keep the gradients sane
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)  # was 5
            print(float(norm))
            opt.step()
        ''')
    removed, added = changed_lines(source, patch(source, "global-norm:max=1"))
    assert removed == ["    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)  # was 5"]
    assert added == ["    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # was 5"]
    removed, added = changed_lines(source, patch(source, "global-norm:max=1,norm=inf"))
    assert added == ['    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, norm_type=float("inf"))'
                     "  # was 5"]
    # Another kind of policy: the call is replaced, its parameters and the use of its result kept.
    after = patch(source, "autoclip:p=10")
    removed, added = changed_lines(source, after)
    assert removed == ["    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)  # was 5"]
    assert added[-1] == "    norm = _gradprobe_clip(model.parameters())[0]  # was 5"
    assert after.count("_gradprobe_clip(") == 1 and "# keep the gradients sane\n    norm =" in after


def test_a_clip_behind_a_condition_is_replaced_by_the_policy_on_every_step():
    patched = patch_source(CIFAR_EXAMPLE, "global-norm:max=2.05", "cifar_sgd_torch.py")
    removed, added = changed_lines(CIFAR_EXAMPLE, patched.after)
    assert removed == ["        if args.max_norm > 0:",
                       "            torch.nn.utils.clip_grad_norm_(params, max_norm=args.max_norm)"]
    assert added == ["        torch.nn.utils.clip_grad_norm_(params, max_norm=2.05)"]
    line = CIFAR_EXAMPLE.splitlines().index("        if args.max_norm > 0:") + 1
    assert patched.notes == [f"cifar_sgd_torch.py:{line}: the clip behind `if args.max_norm > 0:` was replaced "
                             f"by {patched.spec}, which now clips on every step"]
    assert patch_source(patched.after, "global-norm:max=2.05", "cifar_sgd_torch.py").after == patched.after
    # Another kind of policy replaces the guarded call the same way.
    removed, added = changed_lines(CIFAR_EXAMPLE, patch(CIFAR_EXAMPLE, "autoclip:p=10"))
    assert removed[:2] == ["        if args.max_norm > 0:",
                           "            torch.nn.utils.clip_grad_norm_(params, max_norm=args.max_norm)"]
    assert "        _gradprobe_clip(params)" in added


@pytest.mark.parametrize("block", [
    "    if clip:\n        torch.nn.utils.clip_grad_norm_(m.parameters(), 1)\n        print(1)\n",
    "    if clip:\n        torch.nn.utils.clip_grad_norm_(m.parameters(), 1)\n    else:\n        pass\n",
    "    with ctx:\n        torch.nn.utils.clip_grad_norm_(m.parameters(), 1)\n",
])
def test_a_clip_in_a_block_with_other_code_is_refused_with_its_line(block):
    source = ("import torch\nopt = torch.optim.SGD(m.parameters())\nfor x in y:\n    loss.backward()\n"
              + block + "    opt.step()\n")
    message = refusal(source, "global-norm:max=2")
    assert message.startswith("train.py:5: this block clips before `opt.step()` along with other code, so its "
                              "clip would stay in force beside the applied one"), message
    assert "\n" not in message


def test_mistaken_optimizer_clip_call_is_replaced_by_the_real_one():
    source = textwrap.dedent('''\
        import torch.optim as optim
        optimizer = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        for data in loader:
            loss.backward()
            optimizer.clip_grad_norm_(net.parameters(), max_norm=0.5)
            optimizer.step()
        ''')
    removed, added = changed_lines(source, patch(source, "global-norm:max=0.5"))
    assert removed == ["    optimizer.clip_grad_norm_(net.parameters(), max_norm=0.5)"]
    assert added == ["import torch", "    torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=0.5)"]


@pytest.mark.parametrize("script, spec", [
    (script, spec)
    for script in (LOOP, SCALER_LOOP, ACCUMULATION_LOOP, CLASS_LOOP, TWO_MODULES_LOOP, GAN_LOOP, MISTAKEN_CLIP_LOOP,
                   CLIP_HELPER_LOOP)
    for spec in ("global-norm:max=1", "value:max=0.1", "autoclip:p=5", "zclip:z=3+skip:sigma=4", "layer-norm:max=2")
    if not ("GradScaler" in script and "skip" in spec)  # refused: see test_refusals_say_where_and_why
])
def test_applying_twice_changes_nothing_the_second_time(script, spec):
    once = patch(script, spec)
    assert once != script
    assert patch(once, spec) == once


def test_changing_policy_replaces_the_previous_one_and_drops_an_unused_clipper():
    clipper_version = patch(LOOP, "autoclip:p=10")
    assert patch(clipper_version, "global-norm:max=1") == patch(LOOP, "global-norm:max=1")
    plain_version = patch(LOOP, "global-norm:max=1")
    assert patch(plain_version, "value:max=0.5") == patch(LOOP, "value:max=0.5")
    assert patch(plain_version, "autoclip:p=10") == clipper_version
    skip_version = patch(LOOP, "zclip+skip:sigma=5")
    assert patch(skip_version, "autoclip:p=10") == clipper_version


def test_imports_follow_what_the_script_already_imported():
    source = textwrap.dedent('''\
        """Docstring."""
        from torch.optim import SGD
        from torch.nn.utils import clip_grad_norm_
        opt = SGD(params, lr=1)
        loss.backward()
        opt.step()
        ''')
    _, added = changed_lines(source, patch(source, "global-norm:max=1"))
    assert added == ['clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], max_norm=1.0)']
    _, added = changed_lines(source, patch(source, "value:max=1"))
    assert added[0] == "import torch"
    aliased = source.replace('"""Docstring."""\n', '"""Docstring."""\nimport gradprobe as gp\n')
    _, added = changed_lines(aliased, patch(aliased, "agc:lambda=0.01"))
    assert added == ['_gradprobe_clip = gp.clipper("agc:lambda=0.01,eps=0.001")',
                     '_gradprobe_clip([p for g in opt.param_groups for p in g["params"]])']


# -- Keras ---------------------------------------------------------------------------------

KERAS_SOURCE = '''\
import tensorflow as tf
from tensorflow import keras

opt = tf.keras.optimizers.Adam(learning_rate=1e-3, clipnorm=1.0)
opt2 = keras.optimizers.SGD(
    learning_rate=0.1,
    momentum=0.9,
)
schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 100, 0.9)
model.compile(optimizer="rmsprop", loss="mse")
'''


def test_keras_optimizers_get_the_matching_constructor_setting():
    removed, added = changed_lines(KERAS_SOURCE, patch(KERAS_SOURCE, "global-norm:max=0.5"))
    assert removed == ["opt = tf.keras.optimizers.Adam(learning_rate=1e-3, clipnorm=1.0)",
                       'model.compile(optimizer="rmsprop", loss="mse")']
    assert added == ["opt = tf.keras.optimizers.Adam(learning_rate=1e-3, global_clipnorm=0.5)",
                     "    global_clipnorm=0.5,",
                     'model.compile(optimizer=keras.optimizers.RMSprop(global_clipnorm=0.5), loss="mse")']
    assert "clipnorm=0.25" in patch(KERAS_SOURCE, "layer-norm:max=0.25").splitlines()[3]
    assert "clipvalue=2.0" in patch(KERAS_SOURCE, "value:max=2").splitlines()[3]
    for spec in ("global-norm:max=0.5", "layer-norm:max=0.25", "value:max=2"):
        once = patch(KERAS_SOURCE, spec)
        assert patch(once, spec) == once
    both = "import keras\nopt = keras.optimizers.Adam(clipnorm=1, clipvalue=2)\n"
    assert patch(both, "value:max=0.5") == "import keras\nopt = keras.optimizers.Adam(clipvalue=0.5)\n"


def test_a_custom_loops_own_clip_gives_way_to_the_optimizer_setting():
    start = KERAS_SCRIPT.index("def gradient_clipping_optimizer")
    loop = "import keras\nimport tensorflow as tf\n\n\n" + KERAS_SCRIPT[start:KERAS_SCRIPT.index("\n\n\n", start)] + "\n"
    removed, added = changed_lines(loop, patch(loop, "value:max=0.5"))
    assert removed == ["    optimizer = tf.keras.optimizers.SGD(learning_rate=learning_rate)",
                       "        gradients, _ = tf.clip_by_global_norm(gradients, clip_norm)"]
    assert added == ["    optimizer = tf.keras.optimizers.SGD(learning_rate=learning_rate, clipvalue=0.5)"]
    once = patch(loop, "value:max=0.5")
    assert patch(once, "value:max=0.5") == once
    # The other in-place forms go too; clipping data is not clipping gradients and stays.
    for form in ("g = tf.clip_by_global_norm(g, 2.0)[0]", "g = [tf.clip_by_norm(t, 2.0) for t in g]",
                 "g = [tf.math.clip_by_value(t, -1, 1) for t in g]"):
        source = f"import tensorflow as tf\nopt = tf.keras.optimizers.Adam()\ng = tape.gradient(loss, v)\n{form}\n"
        removed, _ = changed_lines(source, patch(source, "global-norm:max=1"))
        assert removed == ["opt = tf.keras.optimizers.Adam()", form]
    data = "import tensorflow as tf\nopt = tf.keras.optimizers.Adam()\nx = tf.clip_by_value(x, 0.0, 1.0)\n"
    assert changed_lines(data, patch(data, "global-norm:max=1"))[0] == ["opt = tf.keras.optimizers.Adam()"]


def test_keras_import_is_added_when_a_named_optimizer_needs_one():
    source = "from tensorflow.keras import layers\nmodel.compile(optimizer='adamw')\n"
    assert patch(source, "value:max=1") == ("from tensorflow.keras import layers\nfrom tensorflow import keras\n"
                                            "model.compile(optimizer=keras.optimizers.AdamW(clipvalue=1.0))\n")


# Each optimizer takes one step of learning rate 1 on the same model and batch, so its update is
# minus the gradient it applied. The custom loop is the multi-label write-up's, which clips itself.
KERAS_SCRIPT = '''\
import json
import sys

import keras
import numpy as np
import tensorflow as tf

rng = np.random.default_rng(0)
x = rng.normal(size=(32, 4)).astype("float32") * 10
y = rng.normal(size=(32, 1)).astype("float32") * 100


def new_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])


def applied(model, train, optimizer=None):
    before = [w.copy() for w in model.get_weights()]
    train()
    opt = optimizer or model.optimizer
    rate = float(opt.learning_rate)
    gradients = [((b - a) / rate).tolist() for b, a in zip(before, model.get_weights())]
    return {"global_clipnorm": opt.global_clipnorm, "clipnorm": opt.clipnorm, "clipvalue": opt.clipvalue,
            "gradients": gradients}


def fit_step(model):
    return applied(model, lambda: model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False))


def gradient_clipping_optimizer(model, learning_rate, clip_norm):
    optimizer = tf.keras.optimizers.SGD(learning_rate=learning_rate)
    loss_function = keras.losses.MeanSquaredError()

    @tf.function
    def train_step(inputs, labels):
        with tf.GradientTape() as tape:
            loss = loss_function(labels, model(inputs, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        gradients, _ = tf.clip_by_global_norm(gradients, clip_norm)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    return optimizer, train_step


results = {}
model = new_model()
model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss="mse")
results["keras"] = fit_step(model)
model = new_model()
model.compile(optimizer=tf.keras.optimizers.SGD(learning_rate=1.0, clipvalue=3.0), loss="mse")
results["tf.keras"] = fit_step(model)
model = new_model()
model.compile(optimizer="sgd", loss="mse")
results["named"] = fit_step(model)
model = new_model()
optimizer, train_step = gradient_clipping_optimizer(model, learning_rate=1.0, clip_norm=3.0)
results["custom"] = applied(model, lambda: train_step(x, y), optimizer)
with open(sys.argv[1], "w") as out:
    json.dump(results, out)
'''

KERAS_RUNNER = '''\
import runpy
import sys

pairs = sys.argv[1:]
for script, out in zip(pairs[::2], pairs[1::2]):
    sys.argv = [script, out]
    runpy.run_path(script, run_name="__main__")
'''


@pytest.mark.slow
@pytest.mark.tensorflow
def test_patched_keras_optimizers_clip_what_they_apply(tmp_path):
    specs = {"global": "global-norm:max=0.5", "layer": "layer-norm:max=0.2", "value": "value:max=0.01",
             "original": None}
    args = []
    for name, spec in specs.items():
        script = tmp_path / f"{name}.py"
        script.write_text(patch_source(KERAS_SCRIPT, spec, script.name).after if spec else KERAS_SCRIPT)
        args += [str(script), str(tmp_path / f"{name}.json")]
    (tmp_path / "runner.py").write_text(KERAS_RUNNER)
    done = subprocess.run([sys.executable, "runner.py", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in specs}
    # The first step's gradient is the same for the three models (same seed, same data); the
    # original script's first optimizer does not clip.
    original = [np.asarray(g) for g in results["original"]["keras"]["gradients"]]
    assert global_l2(original) > 10, "the unclipped gradient must be large for the check to mean anything"
    assert results["original"]["tf.keras"]["clipvalue"] == 3.0
    # The custom loop clips at 3 by itself, before the patch.
    custom = [np.asarray(g) for g in results["original"]["custom"]["gradients"]]
    for g, o in zip(custom, clip_global(original, 3.0, global_l2(original)), strict=True):
        np.testing.assert_allclose(g, o, rtol=2e-3, atol=1e-5)
    for optimizer in ("keras", "tf.keras", "named", "custom"):
        applied = results["global"][optimizer]
        assert (applied["global_clipnorm"], applied["clipnorm"], applied["clipvalue"]) == (0.5, None, None)
        got = [np.asarray(g) for g in applied["gradients"]]
        for g, o in zip(got, clip_global(original, 0.5, global_l2(original))):
            np.testing.assert_allclose(g, o, rtol=2e-3, atol=1e-5)
        applied = results["layer"][optimizer]
        assert (applied["global_clipnorm"], applied["clipnorm"], applied["clipvalue"]) == (None, 0.2, None)
        for g, o in zip(applied["gradients"], original):
            want = o * min(1.0, 0.2 / np.linalg.norm(o))
            np.testing.assert_allclose(np.asarray(g), want, rtol=2e-3, atol=1e-5)
        applied = results["value"][optimizer]
        assert (applied["global_clipnorm"], applied["clipnorm"], applied["clipvalue"]) == (None, None, 0.01)
        for g, o in zip(applied["gradients"], original):
            np.testing.assert_allclose(np.asarray(g), np.clip(o, -0.01, 0.01), rtol=2e-3, atol=1e-5)


# -- refusals ------------------------------------------------------------------------------

@pytest.mark.parametrize("source, spec, expected", [
    ("import torch\nopt = torch.optim.SGD(m.parameters())\nf = lambda: opt.step()\n", "global-norm:max=1",
     "train.py:3: `opt.step()` cannot get a clip before it: it is inside a lambda"),
    ("import torch\nopt = torch.optim.LBFGS(m.parameters())\nopt.step(closure)\n", "global-norm:max=1",
     "train.py:3: `opt.step(closure)` passes a closure"),
    ("import torch\nopt = torch.optim.SGD(m.parameters())\nloss.backward(); opt.step()\n", "global-norm:max=1",
     "train.py:3: `opt.step()` cannot get a clip before it: it shares its line with other statements"),
    ("import torch\nopt = torch.optim.SGD(m.parameters())\nif go: opt.step()\n", "global-norm:max=1",
     "train.py:3: `opt.step()` cannot get a clip before it: it shares its line"),
    ("import torch\nopt = torch.optim.SGD(m.parameters())\nok = opt.step() or 1\n", "global-norm:max=1",
     "train.py:3: `opt.step()` cannot get a clip before it: it is part of a larger expression"),
    ("import torch\nopt = torch.optim.SGD(m.parameters())\nscaler = torch.amp.GradScaler()\nscaler.step(opt)\n",
     "zclip+skip:sigma=5", "train.py:4: `scaler.step(opt)`: a policy that skips updates"),
    ("import torch\nopt = make_optimizer()\nscaler = torch.amp.GradScaler()\nscaler.step(opt)\n",
     "autoclip:p=10", "train.py:4: cannot tell where `opt` is built"),
    ("import torch\nfor x in y:\n    sched.step()\n    opt.step()\n", "global-norm:max=1",
     "train.py: no optimizer found: expected a PyTorch optimizer built with torch.optim.NAME(...)"),
    ("import torch\nopt = torch.optim.SGD(m.parameters())\n", "global-norm:max=1",
     "train.py:2: `opt` is built but never stepped"),
    ("import torch\nopt = torch.optim.SGD(m.parameters())\nloss.backward()\n"
     "torch.nn.utils.clip_grad_value_(m.parameters(), 1)\ntorch.nn.utils.clip_grad_norm_(m.parameters(), 1)\n"
     "opt.step()\n", "global-norm:max=1", "train.py:6: several clip calls (lines 4, 5) before `opt.step()`"),
    ("import torch\nopt = torch.optim.SGD(m.parameters())\nloss.backward()\n"
     "n = torch.nn.utils.clip_grad_norm_(m.parameters(), 1)\nopt.step()\n", "value:max=1",
     "train.py:4: the result of `torch.nn.utils.clip_grad_norm_(m.parameters(), 1)` (norm) is used, "
     "and value:max=1 returns nothing"),
    ("import torch\nopt = torch.optim.SGD(m.parameters())\nfor i in range(8):\n    loss.backward()\n"
     "    n = torch.nn.utils.clip_grad_norm_(m.parameters(), 1)\n    if i % 4 == 3:\n        opt.step()\n",
     "global-norm:max=1", "train.py:5: `torch.nn.utils.clip_grad_norm_(m.parameters(), 1)` runs after every "
     "backward, but `opt.step()` (line 7) only on some (gradient accumulation), and its result is used"),
    ("import tensorflow as tf\nopt = tf.keras.optimizers.SGD()\ng = tape.gradient(loss, v)\n"
     "g, norm = tf.clip_by_global_norm(g, 1.0)\n", "global-norm:max=1",
     "train.py:4: `tf.clip_by_global_norm(g, 1.0)` clips the gradients in the loop, where the optimizer now "
     "clips them"),
    ("import keras\nopt = keras.optimizers.Adam()\n", "autoclip:p=10",
     "train.py:2: autoclip:p=10,warmup=0,window=1000 has no Keras optimizer setting"),
    ("import keras\nmodel.compile(optimizer='nosuch')\n", "value:max=1",
     "train.py:2: optimizer 'nosuch' is not a Keras optimizer name"),
    ("def f(:\n", "value:max=1", "train.py:1: not valid Python"),
])
def test_refusals_say_where_and_why(source, spec, expected):
    message = refusal(source, spec)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_a_refusal_lists_every_problem_and_changes_nothing():
    with pytest.raises(PatchRefused) as info:
        patch_source("import torch\nopt = torch.optim.SGD(m.parameters())\nf = lambda: opt.step()\n"
                     "loss.backward()\nopt.step()\nopt.step(closure)\n", "global-norm:max=1", "train.py")
    assert [p.line for p in info.value.problems] == [3, 6]


# -- the command ---------------------------------------------------------------------------

def test_apply_prints_a_diff_writes_with_write_and_is_idempotent(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(LOOP)
    shown = run_cli("apply", "train.py", "--clip", "global-norm:max=1", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == patch_source(LOOP, "global-norm:max=1", "train.py").diff()
    assert shown.stdout.startswith("--- train.py\n+++ train.py\n")
    assert script.read_text() == LOOP
    written = run_cli("apply", "train.py", "--clip", "global-norm:max=1", "--write", cwd=tmp_path)
    assert written.returncode == 0 and written.stdout == shown.stdout
    assert script.read_text() == patch(LOOP, "global-norm:max=1")
    again = run_cli("apply", "train.py", "--clip", "global-norm:max=1", "--write", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout == ""
    assert "nothing to change" in again.stderr
    assert script.read_text() == patch(LOOP, "global-norm:max=1")


def test_apply_reads_the_first_recommendation(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(LOOP)
    run = tmp_path / "run"
    run.mkdir()
    (run / "recommendation.json").write_text(json.dumps({"recommendations": [
        {"spec": "value:max=0.25", "rationale": "", "clipped_fraction": 0.1, "mean_scale": 0.9},
        {"spec": "global-norm:max=3", "rationale": "", "clipped_fraction": 0.0, "mean_scale": 1.0}]}))
    done = run_cli("apply", "train.py", "--from", "run/recommendation.json", "--write", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert script.read_text() == patch(LOOP, "value:max=0.25")


@pytest.mark.parametrize("args, message", [
    (["--clip", "global-norm:max=1", "--from", "r.json"], "exactly one of --clip SPEC or --from"),
    ([], "exactly one of --clip SPEC or --from"),
    (["--from", "missing/recommendation.json"], "missing/recommendation.json: not found"),
    (["--clip", "global-norm:maxx=1"], "global-norm: unknown key 'maxx'"),
    (["--clip", "global-norm:max=1", "--write"], "train.py:3: `opt.step()` cannot get a clip before it: it is "
                                                   "inside a lambda"),
])
def test_apply_errors_are_one_line_and_leave_the_script_alone(tmp_path, args, message):
    source = "import torch\nopt = torch.optim.SGD(m.parameters())\nf = lambda: opt.step()\n"
    script = tmp_path / "train.py"
    script.write_text(source)
    done = run_cli("apply", "train.py", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert script.read_text() == source


def test_apply_on_a_missing_script_is_a_one_line_error(tmp_path):
    done = run_cli("apply", "nope.py", "--clip", "global-norm:max=1", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == "gradprobe: error: nope.py: no such file"
