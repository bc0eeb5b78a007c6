"""Recording custom TensorFlow loops: eager, ``tf.function``, XLA, the script's own clipping, sparse
and non-finite gradients, loss scaling and ``max_steps``.

The loops return the gradients they compute, which are the references.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from test_tf_support import (assert_steps_match, global_norm, keras, load, norms, recording, relative_names, tf)

from gradprobe.recording.session import Session, StopTraining

pytestmark = pytest.mark.tensorflow


def model_and_data(seed: int = 0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(7, activation="relu", name="a"),
                              keras.layers.Dense(2, name="b")], name="net")
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(32, 5)).astype("float32"))
    y = tf.constant(rng.normal(size=(32, 2)).astype("float32"))
    return model, x, y


def make_step(model, optimizer, clip=None):
    """One training step: tape, optional clipping by the script, ``apply_gradients``.

    Returns the loss, the gradients as computed and as applied.
    """

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - y))
        raw = tape.gradient(loss, model.trainable_variables)
        applied = clip(raw) if clip else raw
        optimizer.apply_gradients(zip(applied, model.trainable_variables))
        return loss, raw, applied

    return step


def run_loop(step, x, y, n):
    losses, raw, applied = [], [], []
    for _ in range(n):
        loss, r, a = step(x, y)
        losses.append(float(loss))
        raw.append([g.numpy() for g in r])
        applied.append([g.numpy() for g in a])
    return losses, raw, applied


def test_eager_loop(tmp_path):
    model, x, y = model_and_data()
    with recording(tmp_path, {model.name: model}, every=2, flush_every=3) as session:
        losses, raw, _ = run_loop(make_step(model, keras.optimizers.Adam(0.01)), x, y, 7)
    run = load(session)
    names = relative_names(model)
    assert list(run.layer_table.name) == names == ["a/kernel", "a/bias", "b/kernel", "b/bias"]
    assert_steps_match(run, 0, raw, names, every=2, losses=losses)


def test_tf_function_loop_traces_once_and_flushes_every_n_steps(tmp_path, monkeypatch):
    model, x, y = model_and_data(1)
    traces = []
    inner = make_step(model, keras.optimizers.SGD(0.05))

    @tf.function
    def step(x, y):
        traces.append(1)
        return inner(x, y)

    appends = []
    original_append = Session.append
    monkeypatch.setattr(Session, "append", lambda self, *a: (appends.append(len(a[0]["step"])),
                                                             original_append(self, *a))[1])
    with recording(tmp_path, {model.name: model}, every=3, flush_every=4) as session:
        losses, raw, _ = run_loop(step, x, y, 12)
        flushed_in_loop = list(appends)
    assert len(traces) == 1
    # Flushed from inside the graph after steps 1 and 2 (early, below flush_every), then at every 4th.
    after = [n for n in range(1, 13) if n in (1, 2) or n % 4 == 0]
    assert flushed_in_loop == [b - a for a, b in zip([0, *after], after)] == [1, 1, 2, 4, 4]
    run = load(session)
    assert_steps_match(run, 0, raw, relative_names(model), every=3, losses=losses)
    assert run.steps.time.is_monotonic_increasing and run.steps.time.notna().all()


def test_script_clip_by_global_norm_in_tf_function(tmp_path):
    model, x, y = model_and_data(2)
    step = tf.function(make_step(model, keras.optimizers.SGD(0.1),
                                 clip=lambda grads: tf.clip_by_global_norm(grads, 0.5)[0]))
    with recording(tmp_path, {model.name: model}, every=1) as session:
        losses, raw, applied = run_loop(step, x, y, 6)
    run = load(session)
    assert run.meta["optimizers"][0]["script_clip"] == "clip_by_global_norm"
    pre = np.array([global_norm(g) for g in raw])
    post = np.array([global_norm(g) for g in applied])
    assert (pre > 0.5).all()
    steps = run.steps
    np.testing.assert_allclose(steps.global_norm, pre, rtol=1e-5)
    np.testing.assert_allclose(steps.global_norm_post, post, rtol=1e-5)
    np.testing.assert_allclose(steps.clip_scale, post / pre, rtol=1e-5)
    np.testing.assert_allclose(steps.clip_threshold, 0.5)
    np.testing.assert_allclose(steps.loss, losses, rtol=1e-6)
    layers = run.layers[run.layers.step == 0].set_index("name").loc[relative_names(model)]
    np.testing.assert_allclose(layers.norm, norms(applied[0]), rtol=1e-5)


def test_script_clip_by_value_eager(tmp_path):
    model, x, y = model_and_data(3)
    step = make_step(model, keras.optimizers.SGD(0.1),
                     clip=lambda grads: [tf.clip_by_value(g, clip_value_min=-0.05, clip_value_max=0.05)
                                         for g in grads])
    with recording(tmp_path, {model.name: model}, every=1) as session:
        losses, raw, applied = run_loop(step, x, y, 4)
    run = load(session)
    assert run.meta["optimizers"][0]["script_clip"] == "clip_by_value"
    steps = run.steps
    np.testing.assert_allclose(steps.global_norm, [global_norm(g) for g in raw], rtol=1e-5)
    np.testing.assert_allclose(steps.global_norm_post, [global_norm(g) for g in applied], rtol=1e-5)
    assert (steps.global_norm_post < steps.global_norm).all()
    np.testing.assert_allclose(steps.clip_threshold, 0.05)
    np.testing.assert_allclose(steps.loss, losses, rtol=1e-6)


def test_xla_loop_is_flushed_between_calls(tmp_path):
    model, x, y = model_and_data(4)
    step = tf.function(make_step(model, keras.optimizers.SGD(0.05)), jit_compile=True)
    with recording(tmp_path, {model.name: model}, every=2, flush_every=4) as session:
        losses, raw, _ = run_loop(step, x, y, 10)
        recorded_in_loop = len(load(session).steps)
    assert recorded_in_loop == 8
    run = load(session)
    assert_steps_match(run, 0, raw, relative_names(model), every=2, losses=losses, rtol=1e-4)
    assert run.steps.time.notna().all() and run.steps.time.is_monotonic_increasing


def test_sparse_gradient_norm_is_the_dense_norm(tmp_path):
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((4,), dtype="int32"), keras.layers.Embedding(10, 3, name="emb"),
                              keras.layers.Flatten(), keras.layers.Dense(1, name="head")], name="sparse")
    ids = tf.constant([[1, 1, 2, 1], [3, 2, 2, 9]])
    optimizer = keras.optimizers.SGD(0.1)
    with recording(tmp_path, {model.name: model}, every=1) as session:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(ids) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        assert isinstance(grads[0], tf.IndexedSlices)
        dense = [tf.convert_to_tensor(g).numpy() for g in grads]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
    run = load(session)
    layers = run.layers.set_index("name").loc[relative_names(model)]
    np.testing.assert_allclose(layers.norm, norms(dense), rtol=1e-6)
    np.testing.assert_allclose(layers.maxabs, [np.abs(g).max() for g in dense], rtol=1e-6)
    np.testing.assert_allclose(run.steps.global_norm, global_norm(dense), rtol=1e-6)


def test_nonfinite_gradients_without_a_tape(tmp_path):
    model, _, _ = model_and_data(6)
    grads = [np.ones(v.shape, "float32") for v in model.trainable_variables]
    grads[0][0, :3] = [np.nan, np.inf, -np.inf]
    grads[3][1] = np.nan
    with recording(tmp_path, {model.name: model}, every=1) as session:
        keras.optimizers.SGD(0.1).apply_gradients(zip([tf.constant(g) for g in grads], model.trainable_variables))
    run = load(session)
    layers = run.layers.set_index("name").loc[relative_names(model)]
    assert list(layers.nonfinite) == [3, 0, 0, 1]
    assert math.isnan(run.steps.loss[0]), "no GradientTape: the loss is unknown"
    assert not np.isfinite(run.steps.global_norm[0])


def test_loss_is_unknown_when_gradients_are_transformed(tmp_path):
    model, x, y = model_and_data(7)
    step = make_step(model, keras.optimizers.SGD(0.1), clip=lambda grads: [g * 0.5 for g in grads])
    with recording(tmp_path, {model.name: model}, every=1) as session:
        _, _, applied = run_loop(step, x, y, 2)
    run = load(session)
    assert run.steps.loss.isna().all()
    np.testing.assert_allclose(run.steps.global_norm, [global_norm(g) for g in applied], rtol=1e-5)


def test_loss_scale_factor_is_divided_out(tmp_path):
    model, x, y = model_and_data(8)
    optimizer = keras.optimizers.SGD(0.1, loss_scale_factor=64.0)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - y))
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss, grads

    with recording(tmp_path, {model.name: model}, every=1) as session:
        results = [step(x, y) for _ in range(3)]
    run = load(session)
    unscaled = [[g.numpy() / 64.0 for g in grads] for _, grads in results]
    assert_steps_match(run, 0, unscaled, relative_names(model), every=1,
                       losses=[float(loss) for loss, _ in results])


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_max_steps_stops_after_the_step_that_reaches_it(tmp_path, compiled):
    model, x, y = model_and_data(9)
    step = make_step(model, keras.optimizers.SGD(0.1))
    if compiled:
        step = tf.function(step)
    calls = []
    with pytest.raises(StopTraining, match="max steps"):
        with recording(tmp_path, {model.name: model}, max_steps=5, every=1, flush_every=50) as session:
            for _ in range(20):
                before = [v.numpy() for v in model.trainable_variables]
                calls.append(before)
                step(x, y)
    after = [v.numpy() for v in model.trainable_variables]
    assert len(calls) == 5
    assert not all(np.array_equal(a, b) for a, b in zip(calls[-1], after)), "the fifth update was applied"
    assert list(load(session).steps.step) == [0, 1, 2, 3, 4]


def test_watch_records_and_clips_a_keras_model(tmp_path):
    import gradprobe

    model, x, y = model_and_data()
    step = make_step(model, keras.optimizers.SGD(0.05))
    weights = [v.numpy().astype(np.float64) for v in model.trainable_variables]
    with gradprobe.watch(model, out=tmp_path, every=1, clip="global-norm:max=0.1") as rec:
        losses, raw, applied = run_loop(step, x, y, 4)
    for grads in raw:  # the update SGD makes with the clipped gradients
        scale = min(1.0, 0.1 / (global_norm(grads) + 1e-6))
        weights = [w - 0.05 * scale * g for w, g in zip(weights, grads)]
    for w, v in zip(weights, model.trainable_variables):
        np.testing.assert_allclose(v.numpy(), w, rtol=1e-4, atol=1e-6)
    run = gradprobe.load_run(rec.path)
    assert run.meta["framework"]["name"] == "tensorflow"
    assert sorted(run.layer_table["name"]) == sorted(relative_names(model))
    expected = [global_norm(r) for r in raw]
    np.testing.assert_allclose(run.steps["global_norm"], expected, rtol=1e-5)
    np.testing.assert_allclose(run.steps["global_norm_post"], np.minimum(expected, 0.1), rtol=1e-4)
    np.testing.assert_allclose(run.steps["loss"], losses, rtol=1e-6)
