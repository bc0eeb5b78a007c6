"""gradprobe's clip policies applied live to TensorFlow training: custom loops (eager and
``tf.function``), skipped updates, and ``fit`` through the ``GradProbe`` callback.

The references are the updates plain SGD makes with gradients the test clips
itself in numpy: ``w_next = w - lr * clip(g)``.
"""

from __future__ import annotations

import numpy as np
import pytest

from test_tf_loops import make_step, model_and_data
from test_tf_support import Snapshots, gradients_at, global_norm, keras, load, norms, recording, relative_names, tf

from gradprobe import load_run
from gradprobe.errors import GradprobeError
from gradprobe.keras import GradProbe

pytestmark = pytest.mark.tensorflow

EPS = 1e-6
LR = 0.1


def weights(model) -> list[np.ndarray]:
    return [v.numpy() for v in model.trainable_variables]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_global_norm_policy_clips_what_the_optimizer_applies(tmp_path, compiled):
    model, x, y = model_and_data(3)
    step = make_step(model, keras.optimizers.SGD(LR))
    if compiled:
        step = tf.function(step)
    before, raw = [], []
    with recording(tmp_path, {model.name: model}, every=2, clip="global-norm:max=2") as session:
        for _ in range(6):
            before.append(weights(model))
            _, grads, _ = step(x, y)
            raw.append([g.numpy() for g in grads])
    after = before[1:] + [weights(model)]
    pre = np.array([global_norm(g) for g in raw])
    scales = np.where(pre > 2, 2 / (pre + EPS), 1.0)
    assert (scales < 1).any() and (scales == 1).any(), "the case must clip some steps and not others"
    for w0, w1, g, s in zip(before, after, raw, scales):
        for a, b, gi in zip(w0, w1, g):
            np.testing.assert_allclose(b, a - LR * s * gi, rtol=1e-5, atol=1e-7)
    if compiled:
        assert step.experimental_get_tracing_count() == 1
    run = load(session)
    assert run.meta["clip"] == "global-norm:max=2,norm=2"
    np.testing.assert_allclose(run.steps.global_norm, pre, rtol=1e-5)
    np.testing.assert_allclose(run.steps.global_norm_post, pre * scales, rtol=1e-5)
    np.testing.assert_allclose(run.steps.clip_scale, scales, rtol=1e-5)
    np.testing.assert_allclose(run.steps.clip_threshold, 2.0)
    assert not run.steps.skipped.any()
    sample = run.layers[run.layers.step == 2].set_index("name").loc[relative_names(model)]
    np.testing.assert_allclose(sample.norm, norms(raw[2]), rtol=1e-5)  # layers are recorded before clipping


def test_skip_policy_leaves_weights_and_optimizer_untouched(tmp_path):
    model, x, y = model_and_data(4)
    optimizer = keras.optimizers.Adam(0.01)
    step = tf.function(make_step(model, optimizer))
    spike = 7
    with recording(tmp_path, {model.name: model}, every=1, clip="skip:sigma=3,window=5,warmup=4") as session:
        for t in range(10):
            before, iterations = weights(model), int(optimizer.iterations)
            step(x, y * (1000.0 if t == spike else 1.0))
            moved = any(not np.array_equal(a, b) for a, b in zip(before, weights(model)))
            assert moved == (t != spike), t
            assert int(optimizer.iterations) == iterations + (t != spike), t
            if t == 0:
                traced = step.experimental_get_tracing_count()  # Adam creates its slots on the first call
    assert step.experimental_get_tracing_count() == traced, "no retrace after the first call"
    run = load(session)
    assert list(run.steps.step[run.steps.skipped]) == [spike]
    assert run.steps.global_norm_post[spike] == 0 and run.steps.clip_scale[spike] == 0


def fit_model_and_data(seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, activation="tanh", name="h"),
                              keras.layers.Dense(2, name="o")], name="clipped")
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    rng = np.random.default_rng(seed)
    return model, rng.normal(size=(30, 4)).astype("float32"), (3 * rng.normal(size=(30, 2))).astype("float32")


def assert_fit_updates(model, snapshots, x, y, clip) -> list[list[np.ndarray]]:
    """Check that every ``fit`` batch (10 rows, unshuffled) updated the weights by plain SGD with the
    gradients clipped by ``clip`` (numpy); returns the unclipped gradients."""
    final = weights(model)
    history = []
    for t, w0 in enumerate(snapshots.weights):
        batch = slice((t % 3) * 10, (t % 3) * 10 + 10)
        grads, _ = gradients_at(model, w0, lambda: keras.losses.MeanSquaredError()(y[batch], model(x[batch])))
        w1 = snapshots.weights[t + 1] if t + 1 < len(snapshots.weights) else final
        for a, b, g in zip(w0, w1, clip(grads)):
            np.testing.assert_allclose(b, a - LR * g, rtol=1e-5, atol=1e-6)
        history.append(grads)
    return history


def test_gradprobe_callback_clips_fit_per_layer(tmp_path):
    model, x, y = fit_model_and_data(5)
    snapshots = Snapshots()
    probe = GradProbe(out=tmp_path, name="clip-run", every=1, clip="layer-norm:max=0.5")
    model.fit(x, y, batch_size=10, epochs=2, shuffle=False, verbose=0, callbacks=[snapshots, probe])
    grads = assert_fit_updates(model, snapshots, x, y,
                               lambda gs: [g * (0.5 / (n + EPS) if n > 0.5 else 1.0) for g, n in zip(gs, norms(gs))])
    assert any((norms(g) > 0.5).any() for g in grads)
    run = load_run(probe.path)
    assert run.meta["clip"] == "layer-norm:max=0.5"
    np.testing.assert_allclose(run.steps.global_norm, [global_norm(g) for g in grads], rtol=1e-5)
    assert (run.steps.clip_scale < 1).any()


def test_gradprobe_callback_clip_applies_when_gradprobe_already_records(tmp_path):
    model, x, y = fit_model_and_data(6)
    snapshots = Snapshots()
    with recording(tmp_path / "profiled", {model.name: model}, every=1) as session:
        probe = GradProbe(out=tmp_path / "callback", clip="global-norm:max=1")
        model.fit(x, y, batch_size=10, epochs=1, shuffle=False, verbose=0, callbacks=[snapshots, probe])
    grads = assert_fit_updates(model, snapshots, x, y,
                               lambda gs: [g * min(1.0, 1.0 / (global_norm(gs) + EPS)) for g in gs])
    assert not (tmp_path / "callback").exists()
    run = load(session)
    assert run.meta["clip"] == "global-norm:max=1,norm=2"
    pre = np.array([global_norm(g) for g in grads])
    assert (pre > 1).any()
    np.testing.assert_allclose(run.steps.global_norm_post, np.minimum(pre, 1.0), rtol=1e-5)


def test_gradprobe_callback_rejects_a_bad_clip_spec_before_training():
    with pytest.raises(GradprobeError, match="no-such-policy"):
        GradProbe(clip="no-such-policy:max=1")


def test_value_policy_clips_a_sparse_gradient_as_its_dense_form(tmp_path):
    keras.utils.set_random_seed(6)
    model = keras.Sequential([keras.Input((4,), dtype="int32"), keras.layers.Embedding(10, 3, name="emb"),
                              keras.layers.Flatten(), keras.layers.Dense(1, name="head")], name="sparse")
    ids = tf.constant([[1, 1, 2, 1], [3, 2, 2, 9]])
    before = weights(model)
    with recording(tmp_path, {model.name: model}, every=1, clip="value:max=0.02"):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(ids) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        assert isinstance(grads[0], tf.IndexedSlices)
        dense = [tf.convert_to_tensor(g).numpy() for g in grads]
        keras.optimizers.SGD(LR).apply_gradients(zip(grads, model.trainable_variables))
    assert max(np.abs(g).max() for g in dense) > 0.02
    for a, b, g in zip(before, weights(model), dense):
        np.testing.assert_allclose(b, a - LR * np.clip(g, -0.02, 0.02), rtol=1e-5, atol=1e-7)


def test_xla_loop_with_loss_scaling_clips_the_unscaled_gradients(tmp_path):
    model, x, y = model_and_data(7)
    optimizer = keras.optimizers.SGD(LR, loss_scale_factor=64.0)

    @tf.function(jit_compile=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            scaled = optimizer.scale_loss(tf.reduce_mean(tf.square(model(x) - y)))
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return grads

    with recording(tmp_path, {model.name: model}, every=1, clip="global-norm:max=0.5") as session:
        for _ in range(3):
            w0 = weights(model)
            unscaled = [g.numpy() / 64.0 for g in step(x, y)]
            n = global_norm(unscaled)
            assert n > 0.5
            for a, b, g in zip(w0, weights(model), unscaled):
                np.testing.assert_allclose(b, a - LR * g * 0.5 / (n + EPS), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(load(session).steps.global_norm_post, 0.5, rtol=1e-4)


def test_a_failing_hook_reports_once_and_training_goes_on_unchanged(tmp_path, monkeypatch, capsys):
    from gradprobe.tensorflow.step_buffer import TFStepBuffer

    def reference():
        model, x, y = model_and_data(8)
        step = tf.function(make_step(model, keras.optimizers.SGD(LR)))
        for _ in range(4):
            step(x, y)
        return weights(model)

    expected = reference()
    monkeypatch.setattr(TFStepBuffer, "record", lambda *a, **k: 1 / 0)
    with recording(tmp_path, clip="global-norm:max=1000") as session:
        actual = reference()
    for a, b in zip(actual, expected):
        np.testing.assert_array_equal(a, b)
    err = capsys.readouterr().err
    assert err.count("gradprobe: internal error") == 1 and "ZeroDivisionError" in err
    meta = load(session).meta
    assert meta["incomplete"] is True and "ZeroDivisionError" in meta["incomplete_reason"]


def test_tf_clipper_in_a_loop_you_own():
    from gradprobe.tensorflow.clip import TFClipper

    model, x, y = model_and_data(9)
    optimizer = keras.optimizers.SGD(LR)
    clip = TFClipper("global-norm:max=1+skip:sigma=3,window=4,warmup=3")

    @tf.function
    def step(y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - y))
        grads = tape.gradient(loss, model.trainable_variables)
        return grads, clip.apply_gradients(optimizer, grads, model.trainable_variables)

    clipped = []
    for t in range(8):
        w0 = weights(model)
        grads, result = step(y * (1000.0 if t == 6 else 1.0))
        grads = [g.numpy() for g in grads]
        n = global_norm(grads)
        clipped.append(t != 6 and n > 1)
        assert bool(result.skipped) == (t == 6)
        np.testing.assert_allclose(float(result.norm), n, rtol=1e-5)
        scale = 0.0 if t == 6 else min(1.0, 1.0 / (n + EPS))
        for a, b, g in zip(w0, weights(model), grads):
            np.testing.assert_allclose(b, a - LR * g * scale, rtol=1e-5, atol=1e-7)
    assert any(clipped)


def test_tf_clipper_is_importable_from_every_documented_path():
    from gradprobe.policies.tf_apply import TFClipper as former
    from gradprobe.tensorflow import TFClipper as exported
    from gradprobe.tensorflow.clip import TFClipper

    assert former is TFClipper and exported is TFClipper
