"""Keras 3 on the PyTorch backend, trained by a torch loop or by ``fit``, profiled by ``gradprobe``.

The scripts run with ``KERAS_BACKEND=torch`` and measure every gradient themselves, with torch's
own ``register_post_accumulate_grad_hook`` (float64 norms), together with the Keras paths of the
variables; the recorded names, groups, order and norms must match.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from conftest import require, run_cli
from gradprobe import load_run

require("torch")
require("keras")

pytestmark = pytest.mark.slow

STEPS = 5

SCRIPT = '''\
import json
import sys

import keras
import numpy as np
import torch

assert keras.backend.backend() == "torch"
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                          keras.layers.Flatten(), keras.layers.Dense(3)])
variables = model.trainable_variables
truth = {"paths": [v.path for v in variables], "model": model.name, "norms": []}


seen = []


def note(_param):
    seen.append(_param)
    if len(seen) == len(variables):  # every gradient of this backward pass is in
        seen.clear()
        truth["norms"].append([float(torch.linalg.vector_norm(v.value.grad.double())) for v in variables])


for v in variables:
    v.value.register_post_accumulate_grad_hook(note)
rng = np.random.default_rng(0)
x = rng.normal(size=(STEPS * 8, 8, 8, 1)).astype("float32")
y = rng.integers(0, 3, STEPS * 8)


def train(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(STEPS):
        xb, yb = torch.tensor(x[step * 8:(step + 1) * 8]), torch.tensor(y[step * 8:(step + 1) * 8])
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()


if sys.argv[1] == "fit":
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
else:
    train(model)
json.dump(truth, open("truth.json", "w"))
'''.replace("STEPS", str(STEPS))


@pytest.mark.parametrize("loop", ["torch-loop", "fit"])
def test_keras_on_torch_is_named_by_keras_paths_with_the_norms_torch_sees(tmp_path, loop):
    (tmp_path / "train.py").write_text(textwrap.dedent(SCRIPT))
    done = run_cli("profile", "--out", "runs", "--name", "r", "--every", "1", "train.py", "--", loop,
                   cwd=tmp_path, env={"KERAS_BACKEND": "torch", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "unrecorded" not in done.stderr, done.stderr
    truth = json.loads((tmp_path / "truth.json").read_text())
    run = load_run(tmp_path / "runs" / "r")
    # One model: its variables' paths without the model's name, grouped by layer, in depth order.
    names = [path.removeprefix(truth["model"] + "/") for path in truth["paths"]]
    assert list(run.layer_table.name) == names == ["conv2d/kernel", "conv2d/bias", "dense/kernel", "dense/bias"]
    assert list(run.layer_table.group) == [name.split("/")[0] for name in names]
    expected = np.array(truth["norms"])
    assert expected.shape == (STEPS, len(names))
    assert list(run.steps.step) == list(range(STEPS))
    np.testing.assert_allclose(run.steps.global_norm, np.sqrt((expected ** 2).sum(axis=1)), rtol=1e-5)
    for step, sample in run.layers.groupby("step"):
        np.testing.assert_allclose(sample.set_index("name").loc[names].norm, expected[step], rtol=1e-5)
