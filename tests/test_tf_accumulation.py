"""Keras optimizers with ``gradient_accumulation_steps``: one recorded step per real update.

The references are computed here: each micro-batch's gradient from the loop itself (or, for
``fit``, from a fresh ``GradientTape`` at the weights before the batch), averaged over the
micro-batches of an update as Keras does; the update applied is read off the weights.
"""

from __future__ import annotations

import numpy as np
import pytest

from test_tf_support import Snapshots, gradients_at, global_norm, keras, load, norms, recording, relative_names, tf

pytestmark = pytest.mark.tensorflow

ACCUMULATE = 2
UPDATES = 10
LR = 0.5
MAX = 1.0
EPS = 1e-6


def model_and_batches(seed: int = 0):
    """A small regression and 20 micro-batches whose gradients jump every third update."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(7, activation="tanh", name="a"),
                              keras.layers.Dense(2, name="b")], name="net")
    rng = np.random.default_rng(seed)
    batches = []
    for k in range(UPDATES * ACCUMULATE):
        scale = 8.0 if (k // ACCUMULATE) % 3 == 0 else 0.05
        batches.append((rng.normal(size=(16, 5)).astype("float32"),
                        (scale * rng.normal(size=(16, 2))).astype("float32")))
    return model, batches


def weights(model) -> list[np.ndarray]:
    return [v.numpy().astype(np.float64) for v in model.trainable_variables]


def accumulated(micro: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """The mean gradient of each update's micro-batches."""
    return [[np.mean([np.asarray(m[i], np.float64) for m in micro[u:u + ACCUMULATE]], axis=0)
             for i in range(len(micro[0]))] for u in range(0, len(micro), ACCUMULATE)]


def assert_updates_used(before, after, grads, scales):
    """SGD moved the weights by ``-LR * scale * grad`` at each update."""
    for w0, w1, g, s in zip(before, after, grads, scales, strict=True):
        for a, b, gi in zip(w0, w1, g):
            np.testing.assert_allclose(b - a, -LR * s * gi, rtol=1e-4, atol=1e-6)


def assert_recorded(run, model, grads, losses, clip: bool):
    pre = np.array([global_norm(g) for g in grads])
    assert list(run.steps.step) == list(range(UPDATES))
    np.testing.assert_allclose(run.steps.global_norm, pre, rtol=1e-5)
    np.testing.assert_allclose(run.steps.loss, losses, rtol=1e-5)
    names = relative_names(model)
    assert list(run.layer_table.name) == names
    for step, sample in run.layers.groupby("step"):
        np.testing.assert_allclose(sample.set_index("name").loc[names].norm, norms(grads[step]), rtol=1e-5)
    scales = np.where(pre > MAX, MAX / (pre + EPS), 1.0) if clip else np.ones(UPDATES)
    assert 0 < (scales < 1).sum() < UPDATES or not clip, "the case must clip some updates and not others"
    np.testing.assert_allclose(run.steps.global_norm_post, pre * scales, rtol=1e-5)
    return scales


@pytest.mark.parametrize("clip", [False, True], ids=["profile", "clip"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_custom_loop_records_and_clips_each_update_once(tmp_path, compiled, clip):
    model, batches = model_and_batches()
    optimizer = keras.optimizers.SGD(LR, gradient_accumulation_steps=ACCUMULATE)

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - y))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, grads

    if compiled:
        step = tf.function(step)
    snapshots, micro, micro_losses = [], [], []
    with recording(tmp_path, {model.name: model}, every=1,
                   clip=f"global-norm:max={MAX}" if clip else None) as session:
        for x, y in batches:
            snapshots.append(weights(model))
            loss, grads = step(tf.constant(x), tf.constant(y))
            micro.append([g.numpy() for g in grads])
            micro_losses.append(float(loss))
    grads = accumulated(micro)
    losses = np.mean(np.reshape(micro_losses, (UPDATES, ACCUMULATE)), axis=1)
    scales = assert_recorded(load(session), model, grads, losses, clip)
    before = snapshots[::ACCUMULATE]
    assert_updates_used(before, before[1:] + [weights(model)], grads, scales)


@pytest.mark.slow
@pytest.mark.parametrize("clip", [False, True], ids=["profile", "clip"])
def test_fit_records_and_clips_each_update_once(tmp_path, clip):
    model, batches = model_and_batches(1)
    model.compile(optimizer=keras.optimizers.SGD(LR, gradient_accumulation_steps=ACCUMULATE), loss="mse")
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    snapshots = Snapshots()
    with recording(tmp_path, {model.name: model}, every=1,
                   clip=f"global-norm:max={MAX}" if clip else None) as session:
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[snapshots])
    final = weights(model)
    micro, micro_losses = [], []
    for w, (xb, yb) in zip(snapshots.weights, batches, strict=True):
        g, loss = gradients_at(model, w, lambda: tf.reduce_mean(tf.square(model(xb) - yb)))
        micro.append(g)
        micro_losses.append(loss)
    grads = accumulated(micro)
    losses = np.mean(np.reshape(micro_losses, (UPDATES, ACCUMULATE)), axis=1)
    scales = assert_recorded(load(session), model, grads, losses, clip)
    before = [[np.asarray(v, np.float64) for v in w] for w in snapshots.weights[::ACCUMULATE]]
    assert_updates_used(before, before[1:] + [final], grads, scales)
