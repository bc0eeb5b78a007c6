"""Recording Keras ``fit``: default and overridden ``train_step``, a GAN, and the optimizer's own clipping.

Each test keeps the weights before every batch and recomputes that batch's
gradients with a fresh ``GradientTape`` to get the reference norms.
"""

from __future__ import annotations

import numpy as np
import pytest

from test_tf_support import (Snapshots, assert_steps_match, gradients_at, keras, load, norms, recording,
                             relative_names, tf)

pytestmark = [pytest.mark.tensorflow, pytest.mark.slow]

BATCH = 16
NAMES = ["hidden/kernel", "hidden/bias", "out/kernel", "out/bias"]


def data(n: int = 64, features: int = 6, outputs: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)).astype("float32"), rng.normal(size=(n, outputs)).astype("float32")


def sequential():
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh", name="hidden"),
                             keras.layers.Dense(3, name="out")], name="seq")


def functional():
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="tanh", name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(hidden), name="func")


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation="tanh", name="hidden")
        self.out = keras.layers.Dense(3, name="out")

    def call(self, x):
        return self.out(self.hidden(x))


def subclassed():
    model = Subclassed(name="sub")
    model(tf.zeros((1, 6)))
    return model


def mse(model, x, y):
    return lambda: tf.reduce_mean(tf.square(model(x) - y))


def references(model, snapshots, x, y):
    """Reference gradients and losses of every recorded step (batches in order, no shuffling)."""
    batches = len(x) // BATCH
    results = []
    for step, weights in enumerate(snapshots):
        b = step % batches
        xb, yb = x[b * BATCH:(b + 1) * BATCH], y[b * BATCH:(b + 1) * BATCH]
        results.append(gradients_at(model, weights, mse(model, xb, yb)))
    return [g for g, _ in results], [loss for _, loss in results]


@pytest.mark.parametrize("build", [sequential, functional, subclassed])
def test_fit_default_train_step_records_every_step(tmp_path, build):
    keras.utils.set_random_seed(0)
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    x, y = data()
    snapshots = Snapshots()
    with recording(tmp_path, {model.name: model}, every=3, flush_every=5) as session:
        model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[snapshots])
    run = load(session)
    assert relative_names(model) == NAMES
    assert list(run.layer_table.name) == NAMES
    assert list(run.layer_table.group) == ["hidden", "hidden", "out", "out"]
    assert run.meta["framework"]["name"] == "tensorflow"
    assert run.meta["optimizers"][0]["class"] == "Adam" and run.meta["optimizers"][0]["clip"] is None
    grads, losses = references(model, snapshots.weights, x, y)
    assert len(grads) == 8
    assert_steps_match(run, 0, grads, NAMES, every=3, params=snapshots.weights, losses=losses)
    steps = run.steps
    np.testing.assert_allclose(steps.global_norm_post, steps.global_norm)
    assert (steps.clip_scale == 1).all() and steps.clip_threshold.isna().all() and not steps.skipped.any()


def keras_clipped(kind: str, value: float, grads):
    """The gradients Keras applies after its own clipping, computed with numpy."""
    if kind == "global_clipnorm":
        total = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads))
        return [g * min(1.0, value / total) for g in grads]
    if kind == "clipnorm":
        return [g * value / max(n, value) for g, n in zip(grads, norms(grads))]
    return [np.clip(g, -value, value) for g in grads]


@pytest.mark.parametrize("kind,value", [("global_clipnorm", 1.0), ("clipnorm", 0.4), ("clipvalue", 0.25)])
def test_fit_with_optimizer_clipping_records_the_clipping_in_force(tmp_path, kind, value):
    keras.utils.set_random_seed(0)
    model = sequential()
    lr = 0.5
    model.compile(optimizer=keras.optimizers.SGD(lr, **{kind: value}), loss="mse")
    x, y = data(seed=1)
    snapshots = Snapshots()
    with recording(tmp_path, {model.name: model}, every=1) as session:
        model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[snapshots])
    final = [v.numpy() for v in model.trainable_variables]
    run = load(session)
    assert run.meta["optimizers"][0]["clip"] == {"kind": kind, "threshold": value}
    grads, _ = references(model, snapshots.weights, x, y)
    assert_steps_match(run, 0, grads, NAMES, every=1, params=snapshots.weights)
    post = [np.sqrt(sum(np.sum(c ** 2) for c in keras_clipped(kind, value, g))) for g in grads]
    after = snapshots.weights[1:] + [final]
    applied = [np.sqrt(sum(np.sum((a - b).astype(np.float64) ** 2) for a, b in zip(w0, w1))) / lr
               for w0, w1 in zip(snapshots.weights, after)]
    steps = run.steps
    np.testing.assert_allclose(steps.global_norm_post, post, rtol=1e-5)
    np.testing.assert_allclose(steps.global_norm_post, applied, rtol=1e-3)
    np.testing.assert_allclose(steps.clip_scale, np.asarray(post) / steps.global_norm, rtol=1e-5)
    np.testing.assert_allclose(steps.clip_threshold, value, rtol=1e-6)
    # thresholds are chosen so that clipping fires on some steps (global) or tensors (per tensor) only
    assert (steps.clip_scale < 1).any()
    if kind == "global_clipnorm":
        assert (steps.clip_scale == 1).any()
    elif kind == "clipnorm":
        assert (run.layers.norm < value).any()
    else:
        assert (run.layers.maxabs < value).any()


class CustomStep(keras.Model):
    """A model whose ``train_step`` computes its own loss and applies the gradients itself."""

    def __init__(self, use_apply: bool, **kwargs):
        super().__init__(**kwargs)
        self.use_apply = use_apply
        self.hidden = keras.layers.Dense(8, activation="tanh", name="hidden")
        self.out = keras.layers.Dense(3, name="out")

    def call(self, x):
        return self.out(self.hidden(x))

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(self(x) - y))
        grads = tape.gradient(loss, self.trainable_variables)
        if self.use_apply:
            self.optimizer.apply(grads, self.trainable_variables)
        else:
            self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return {"loss": loss}


@pytest.mark.parametrize("use_apply", [True, False], ids=["apply", "apply_gradients"])
def test_fit_with_overridden_train_step(tmp_path, use_apply):
    model = CustomStep(use_apply, name="custom")
    model(tf.zeros((1, 6)))
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    x, y = data(seed=2)
    snapshots = Snapshots()
    with recording(tmp_path, {model.name: model}, every=2, flush_every=3) as session:
        model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[snapshots])
    run = load(session)
    assert list(run.layer_table.name) == NAMES
    grads, losses = references(model, snapshots.weights, x, y)
    assert_steps_match(run, 0, grads, NAMES, every=2, params=snapshots.weights, losses=losses)


def softplus_loss(logits, real: bool):
    return tf.reduce_mean(tf.nn.softplus(-logits if real else logits))


class GAN(keras.Model):
    """Generator and discriminator, each with its own optimizer, in one ``train_step``."""

    def __init__(self):
        super().__init__(name="gan")
        self.generator = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh", name="g1"),
                                           keras.layers.Dense(6, name="g2")], name="generator")
        self.discriminator = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh", name="d1"),
                                               keras.layers.Dense(1, name="d2")], name="discriminator")

    def compile(self, d_optimizer, g_optimizer):
        super().compile()
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer

    def d_loss(self, real, noise):
        return (softplus_loss(self.discriminator(real), True)
                + softplus_loss(self.discriminator(self.generator(noise)), False))

    def g_loss(self, noise):
        return softplus_loss(self.discriminator(self.generator(noise)), True)

    def train_step(self, data):
        real, noise = data[0]
        d_vars, g_vars = self.discriminator.trainable_variables, self.generator.trainable_variables
        with tf.GradientTape() as tape:
            d_loss = self.d_loss(real, noise)
        self.d_optimizer.apply_gradients(zip(tape.gradient(d_loss, d_vars), d_vars))
        with tf.GradientTape() as tape:
            g_loss = self.g_loss(noise)
        self.g_optimizer.apply(tape.gradient(g_loss, g_vars), g_vars)
        return {"d_loss": d_loss, "g_loss": g_loss}


def test_fit_gan_with_two_optimizers(tmp_path):
    gan = GAN()
    gan.compile(keras.optimizers.SGD(0.1), keras.optimizers.Adam(0.01))
    rng = np.random.default_rng(3)
    real = rng.normal(size=(48, 6)).astype("float32")
    noise = rng.normal(size=(48, 4)).astype("float32")
    snapshots = Snapshots()
    with recording(tmp_path, {gan.name: gan}, every=1) as session:
        gan.fit((real, noise), batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[snapshots])
    run = load(session)
    optimizers = run.meta["optimizers"]
    assert [o["class"] for o in optimizers] == ["SGD", "Adam"]
    table = run.layer_table
    d_names = ["discriminator/d1/kernel", "discriminator/d1/bias", "discriminator/d2/kernel", "discriminator/d2/bias"]
    g_names = ["generator/g1/kernel", "generator/g1/bias", "generator/g2/kernel", "generator/g2/bias"]
    assert list(table[table.optimizer == 0].name) == d_names
    assert list(table[table.optimizer == 1].name) == g_names
    assert set(table[table.optimizer == 0].group) == {"discriminator"}
    assert set(table[table.optimizer == 1].group) == {"generator"}

    states = snapshots.weights + [[v.numpy() for v in gan.trainable_variables]]
    split = {id(v): i for i, v in enumerate(gan.trainable_variables)}
    d_index = [split[id(v)] for v in gan.discriminator.trainable_variables]
    g_index = [split[id(v)] for v in gan.generator.trainable_variables]
    d_grads, d_losses, g_grads, g_losses = [], [], [], []
    for step in range(len(snapshots.weights)):
        rb, nb = real[step * BATCH:(step + 1) * BATCH], noise[step * BATCH:(step + 1) * BATCH]
        before, after = states[step], states[step + 1]
        for v, i in zip(gan.generator.trainable_variables, g_index):
            v.assign(before[i])
        grads, loss = gradients_at(gan.discriminator, [before[i] for i in d_index], lambda: gan.d_loss(rb, nb))
        d_grads.append(grads)
        d_losses.append(loss)
        for v, i in zip(gan.discriminator.trainable_variables, d_index):
            v.assign(after[i])  # the generator steps after the discriminator's update
        grads, loss = gradients_at(gan.generator, [before[i] for i in g_index], lambda: gan.g_loss(nb))
        g_grads.append(grads)
        g_losses.append(loss)
    assert_steps_match(run, 0, d_grads, d_names, every=1, losses=d_losses, rtol=1e-4)
    assert_steps_match(run, 1, g_grads, g_names, every=1, losses=g_losses, rtol=1e-4)


def test_fit_mixed_precision_records_unscaled_gradients_and_loss(tmp_path):
    keras.utils.set_random_seed(4)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh", name="hidden"),
                                  keras.layers.Dense(3, name="out", dtype="float32")], name="mixed")
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
        assert type(model.optimizer).__name__ == "LossScaleOptimizer"
        x, y = data(seed=4)
        snapshots = Snapshots()
        with recording(tmp_path, {model.name: model}, every=1) as session:
            model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[snapshots])
        grads, losses = references(model, snapshots.weights, x, y)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    run = load(session)
    assert run.meta["optimizers"][0]["class"] == "SGD"
    assert_steps_match(run, 0, grads, NAMES, every=1, losses=losses, rtol=2e-3)


def test_fit_with_steps_per_execution_loses_no_step(tmp_path, capsys):
    model = sequential()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", steps_per_execution=3)
    x, y = data(n=160)
    with recording(tmp_path, {model.name: model}, every=4, flush_every=7) as session:
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    run = load(session)
    assert list(run.steps.step) == list(range(40))
    assert sorted(set(run.layers.step)) == list(range(0, 40, 4))
    assert "not recorded" not in capsys.readouterr().err
