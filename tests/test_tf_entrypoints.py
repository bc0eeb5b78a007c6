"""``gradprobe profile`` on unmodified TensorFlow scripts, and the ``GradProbe`` Keras callback."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

from test_tf_support import SUBPROCESS_ENV, keras

from gradprobe import load_run
from gradprobe.keras import GradProbe

pytestmark = [pytest.mark.tensorflow, pytest.mark.slow]

FIT_SCRIPT = """
import json, sys
import numpy as np
import keras
from gradprobe.keras import GradProbe

keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(96, 6)).astype("float32")
y = rng.normal(size=(96, 1)).astype("float32")
model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu", name="hidden"),
                          keras.layers.Dense(1, name="out")], name="regressor")
model.compile(optimizer=keras.optimizers.Adam(0.01, clipnorm=1.0), loss="mse")
history = model.fit(x, y, batch_size=32, epochs=3, verbose=0,
                    callbacks=[GradProbe(out=sys.argv[1])])
print("history", json.dumps(history.history["loss"]))
print("torch imported:", "torch" in sys.modules)
"""

LOOP_SCRIPT = """
import tensorflow as tf
import keras

model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
optimizer = keras.optimizers.SGD(0.1)
x, y = tf.ones((4, 3)), tf.zeros((4, 2))

@tf.function
def step():
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x) - y))
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

for i in range(50):
    step()
print("loop ended")
"""


def only_run(root):
    (path,) = root.iterdir()
    return load_run(path)


def test_profile_keras_fit_script(tmp_path, write_script):
    script = write_script(FIT_SCRIPT)
    result = run_cli("profile", "--out", str(tmp_path / "runs"), "--every", "2", str(script), "--",
                     str(tmp_path / "callback-runs"), cwd=tmp_path, env=SUBPROCESS_ENV)
    assert result.returncode == 0, result.stderr
    assert "internal error" not in result.stderr, result.stderr
    assert "torch imported: False" in result.stdout
    assert not (tmp_path / "callback-runs").exists(), "the callback defers to the profiler's recording"
    run = only_run(tmp_path / "runs")
    assert run.meta["status"] == "finished"
    assert run.meta["framework"]["name"] == "tensorflow"
    assert run.meta["optimizers"][0]["clip"] == {"kind": "clipnorm", "threshold": 1.0}
    assert list(run.layer_table.name) == ["hidden/kernel", "hidden/bias", "out/kernel", "out/bias"]
    assert list(run.layer_table.group) == ["hidden", "hidden", "out", "out"]
    assert list(run.steps.step) == list(range(9))
    assert sorted(set(run.layers.step)) == [0, 2, 4, 6, 8]
    # Keras reports each epoch's mean batch loss (equal batches): the recorded losses agree
    history = json.loads(result.stdout.split("history ", 1)[1].splitlines()[0])
    np.testing.assert_allclose(run.steps.loss.to_numpy().reshape(3, 3).mean(axis=1), history, rtol=1e-5)
    # the framework-neutral report reads the TensorFlow run as it is
    (path,) = (tmp_path / "runs").iterdir()
    report = run_cli("report", str(path), "--format", "json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    report = json.loads(report.stdout)
    assert report["run"]["framework"]["name"] == "tensorflow"
    assert report["recommendations"] and all(r["spec"] for r in report["recommendations"])


@pytest.mark.parametrize("script_source", [FIT_SCRIPT, LOOP_SCRIPT], ids=["fit", "tf.function"])
def test_profile_max_steps_ends_tensorflow_scripts_cleanly(tmp_path, write_script, script_source):
    script = write_script(script_source)
    result = run_cli("profile", "--out", str(tmp_path / "runs"), "--max-steps", "4", str(script), "--",
                     str(tmp_path / "callback-runs"), cwd=tmp_path, env=SUBPROCESS_ENV)
    assert result.returncode == 0, result.stderr
    assert "internal error" not in result.stderr, result.stderr
    assert "history" not in result.stdout and "loop ended" not in result.stdout
    run = only_run(tmp_path / "runs")
    assert run.meta["status"] == "finished"
    assert "max steps (4)" in run.meta["stop_reason"]
    assert list(run.steps.step) == [0, 1, 2, 3]


CLIP_SCRIPT = """
import numpy as np
import tensorflow as tf
import keras

model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, kernel_initializer="ones")])
optimizer = keras.optimizers.SGD(0.1)
x, y = tf.ones((4, 3)), tf.zeros((4, 1))

@tf.function
def step():
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x) - y))
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

for i in range(20):
    step()
print("weights", np.concatenate([v.numpy().ravel() for v in model.trainable_variables]).tolist())
"""


def test_run_clip_applies_the_policy_to_an_unmodified_tf_function_loop(tmp_path, write_script):
    script = write_script(CLIP_SCRIPT)
    result = run_cli("run", "--out", str(tmp_path / "runs"), "--clip", "global-norm:max=0.05", str(script),
                     cwd=tmp_path, env=SUBPROCESS_ENV)
    assert result.returncode == 0, result.stderr
    assert "internal error" not in result.stderr, result.stderr
    # Reference: prediction p = sum(w) + b on every row, loss p^2, so dL/dw_i = dL/db = 2p.
    w, b, pre = np.ones(3), 0.0, []
    for _ in range(20):
        p = w.sum() + b
        grad = np.full(4, 2 * p)
        norm = np.linalg.norm(grad)
        scale = min(1.0, 0.05 / (norm + 1e-6))
        w, b = w - 0.1 * scale * grad[:3], b - 0.1 * scale * grad[3]
        pre.append(norm)
    expected_weights = [*w, b]
    assert result.stdout.startswith("weights ") and len(result.stdout.splitlines()) == 1
    np.testing.assert_allclose(json.loads(result.stdout.split(" ", 1)[1]), expected_weights, rtol=1e-5)
    run = only_run(tmp_path / "runs")
    assert run.meta["clip"] == "global-norm:max=0.05,norm=2"
    np.testing.assert_allclose(run.steps.global_norm, pre, rtol=1e-5)
    np.testing.assert_allclose(run.steps.global_norm_post, 0.05, rtol=1e-4)
    np.testing.assert_allclose(run.steps.clip_threshold, 0.05)


def test_gradprobe_callback_records_fit_and_unpatches(tmp_path):
    from keras.src.optimizers.base_optimizer import BaseOptimizer

    original_apply = BaseOptimizer.apply
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="tanh", name="h"),
                              keras.layers.Dense(1, name="o")], name="probed")
    model.compile(optimizer=keras.optimizers.SGD(0.05, global_clipnorm=0.5), loss="mse")
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 4)).astype("float32"), rng.normal(size=(40, 1)).astype("float32")
    probe = GradProbe(out=tmp_path, name="probe-run", every=2, flush_every=3)
    history = model.fit(x, y, batch_size=10, epochs=2, shuffle=False, verbose=0, callbacks=[probe])
    assert BaseOptimizer.apply is original_apply
    assert probe.path == tmp_path / "probe-run"
    run = load_run(probe.path)
    assert run.meta["status"] == "finished"
    assert list(run.layer_table.name) == ["h/kernel", "h/bias", "o/kernel", "o/bias"]
    assert list(run.steps.step) == list(range(8))
    np.testing.assert_allclose(run.steps.loss.to_numpy().reshape(2, 4).mean(axis=1), history.history["loss"],
                               rtol=1e-5)
    steps = run.steps
    np.testing.assert_allclose(steps.global_norm_post, np.minimum(steps.global_norm, 0.5), rtol=1e-5)
    np.testing.assert_allclose(steps.clip_threshold, 0.5)


def test_gradprobe_callback_rejects_bad_settings():
    from gradprobe.errors import GradprobeError

    with pytest.raises(GradprobeError, match="every"):
        GradProbe(every=0)
