"""Recording under ``tf.distribute.MirroredStrategy`` with two logical CPU devices.

The script runs under ``gradprobe profile`` (the logical devices must be set
up before TensorFlow starts, so it needs its own process) and saves the
weights before every step; the test recomputes the aggregated gradient, the
gradient of the mean loss over the whole global batch, on one device. The
recorded loss is the first replica's: the mean over the first half of the
global batch. A third ``fit`` clips with ``GradProbe(clip=...)``: the update
must be that of the clipped aggregated gradient.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli

from test_tf_support import SUBPROCESS_ENV, assert_steps_match, global_norm, gradients_at, keras, tf

from gradprobe import load_run

pytestmark = [pytest.mark.tensorflow, pytest.mark.slow]

GLOBAL_BATCH = 16

SCRIPT = """
import sys
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from gradprobe.keras import GradProbe

def build(name):
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(6, activation="tanh", name="h"),
                             keras.layers.Dense(2, name="o")], name=name)

class Snapshots(keras.callbacks.Callback):
    weights = []
    def on_train_batch_begin(self, batch, logs=None):
        self.weights.append([v.numpy() for v in self.model.trainable_variables])

keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 5)).astype("float32")
y = rng.normal(size=(64, 2)).astype("float32")
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    fitted = build("fitted")
    fitted.compile(optimizer=keras.optimizers.SGD(0.1, global_clipnorm=100.0), loss="mse")
fitted.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[Snapshots()])

with strategy.scope():
    looped = build("looped")
    optimizer = keras.optimizers.Adam(0.01)
    optimizer.build(looped.trainable_variables)
data = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(16))

def replica_step(xb, yb):
    with tf.GradientTape() as tape:
        per_example = tf.reduce_mean(tf.square(looped(xb) - yb), axis=1)
        loss = tf.nn.compute_average_loss(per_example, global_batch_size=16)
    grads = tape.gradient(loss, looped.trainable_variables)
    optimizer.apply_gradients(zip(grads, looped.trainable_variables))

@tf.function
def step(xb, yb):
    strategy.run(replica_step, args=(xb, yb))

loop_weights = []
for xb, yb in data:
    loop_weights.append([v.numpy() for v in looped.trainable_variables])
    step(xb, yb)

class ClipSnapshots(Snapshots):
    weights = []

with strategy.scope():
    clipped = build("clipped")
    clipped.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
clipped.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
            callbacks=[ClipSnapshots(), GradProbe(clip="global-norm:max=0.2")])
ClipSnapshots.weights.append([v.numpy() for v in clipped.trainable_variables])

np.savez(sys.argv[1], x=x, y=y,
         **{f"fit{i}_{j}": w for i, ws in enumerate(Snapshots.weights) for j, w in enumerate(ws)},
         **{f"loop{i}_{j}": w for i, ws in enumerate(loop_weights) for j, w in enumerate(ws)},
         **{f"clip{i}_{j}": w for i, ws in enumerate(ClipSnapshots.weights) for j, w in enumerate(ws)})
print("torch imported:", "torch" in sys.modules)
"""


def test_mirrored_strategy_records_the_aggregated_gradient_once_per_step(tmp_path, write_script):
    script = write_script(SCRIPT)
    result = run_cli("profile", "--out", str(tmp_path / "runs"), "--every", "1", str(script), "--",
                     str(tmp_path / "weights.npz"), cwd=tmp_path, env=SUBPROCESS_ENV)
    assert result.returncode == 0, result.stderr
    assert "internal error" not in result.stderr, result.stderr
    assert "torch imported: False" in result.stdout
    (path,) = (tmp_path / "runs").iterdir()
    run = load_run(path)
    saved = np.load(tmp_path / "weights.npz")
    x, y = saved["x"], saved["y"]

    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(2)])
    names = {0: ["h/kernel", "h/bias", "o/kernel", "o/bias"],
             1: ["looped/h/kernel", "looped/h/bias", "looped/o/kernel", "looped/o/bias"]}
    for optimizer, prefix in [(0, "fit"), (1, "loop")]:
        assert list(run.layer_table[run.layer_table.optimizer == optimizer].name) == names[optimizer]
        grads, losses = [], []
        for step in range(len(x) // GLOBAL_BATCH):
            weights = [saved[f"{prefix}{step}_{j}"] for j in range(4)]
            batch = slice(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH)
            first_replica = slice(step * GLOBAL_BATCH, step * GLOBAL_BATCH + GLOBAL_BATCH // 2)
            grads.append(gradients_at(model, weights, lambda: tf.reduce_mean(tf.square(model(x[batch]) - y[batch])))[0])
            losses.append(float(tf.reduce_mean(tf.square(model(x[first_replica]) - y[first_replica]))))
        assert_steps_match(run, optimizer, grads, names[optimizer], every=1, params=None, losses=losses, rtol=1e-4)
    assert run.meta["status"] == "finished"
    assert not run.steps.duplicated(["optimizer", "step"]).any()
    # Keras clips each replica's gradient before aggregating: the threshold is known, the scale is not
    fitted = run.steps[run.steps.optimizer == 0]
    assert (fitted.clip_threshold == 100.0).all() and fitted.clip_scale.isna().all()
    looped = run.steps[run.steps.optimizer == 1]
    assert looped.clip_threshold.isna().all() and (looped.clip_scale == 1.0).all()

    # GradProbe(clip=...) in the third fit: every replica clips the aggregated gradient alike
    assert run.meta["clip"] == "global-norm:max=0.2,norm=2"
    clipped = run.steps[run.steps.optimizer == 2].reset_index(drop=True)
    steps = len(x) // GLOBAL_BATCH
    assert list(clipped.step) == list(range(steps))
    for step in range(steps):
        before = [saved[f"clip{step}_{j}"] for j in range(4)]
        after = [saved[f"clip{step + 1}_{j}"] for j in range(4)]
        batch = slice(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH)
        grads, _ = gradients_at(model, before, lambda: tf.reduce_mean(tf.square(model(x[batch]) - y[batch])))
        norm = global_norm(grads)
        assert norm > 0.2
        np.testing.assert_allclose(clipped.global_norm[step], norm, rtol=1e-4)
        np.testing.assert_allclose(clipped.global_norm_post[step], 0.2, rtol=1e-4)
        for a, b, g in zip(before, after, grads):
            np.testing.assert_allclose(b, a - 0.1 * g * 0.2 / (norm + 1e-6), rtol=1e-4, atol=1e-6)
