"""Helpers shared by the TensorFlow tests: a recording context and reference gradient norms.

References are computed independently of gradprobe: gradients from a fresh
``tf.GradientTape`` (or captured from the training loop itself), reduced
with numpy in float64.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from conftest import require

tf = require("tensorflow")
keras = require("keras")

from gradprobe import load_run  # noqa: E402
from gradprobe.recording.session import Sampling, Session  # noqa: E402
from gradprobe.tensorflow import TFRecorder, VariableNamer  # noqa: E402

SUBPROCESS_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


@contextmanager
def recording(out, models=None, max_steps=None, clip=None, **sampling) -> Iterator[Session]:
    """Record everything inside the block into a new run under ``out`` (applying the clip policy
    ``clip``); the session is closed after."""
    session = Session(out=out, sampling=Sampling(**sampling), max_steps=max_steps, clip=clip)
    recorder = TFRecorder(session, VariableNamer(models) if models else None).install()
    try:
        yield session
    finally:
        recorder.remove()
        session.close("finished")


def norms(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """L2 norm of each array, in float64."""
    return np.array([np.sqrt(np.sum(np.square(np.asarray(a, np.float64)))) for a in arrays])


def global_norm(arrays: Sequence[np.ndarray]) -> float:
    """L2 norm of all arrays together, in float64."""
    return float(np.sqrt(np.sum(norms(arrays) ** 2)))


def relative_names(model) -> list[str]:
    """The trainable variables' paths without the model's own name (how a single model is named)."""
    return [v.path.removeprefix(model.name + "/") for v in model.trainable_variables]


class Snapshots(keras.callbacks.Callback):
    """Keeps the trainable weights before every training batch."""

    def __init__(self):
        super().__init__()
        self.weights: list[list[np.ndarray]] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.weights.append([v.numpy() for v in self.model.trainable_variables])


def gradients_at(model, weights, loss_fn) -> tuple[list[np.ndarray], float]:
    """Set ``model``'s trainable weights and return the gradients of ``loss_fn()`` and the loss."""
    for variable, value in zip(model.trainable_variables, weights):
        variable.assign(value)
    with tf.GradientTape() as tape:
        loss = loss_fn()
    grads = tape.gradient(loss, model.trainable_variables)
    return [g.numpy() for g in grads], float(loss)


def assert_steps_match(run, optimizer: int, grads: Sequence[Sequence[np.ndarray]], names: Sequence[str],
                       every: int, params: Sequence[Sequence[np.ndarray]] | None = None, rtol: float = 1e-5,
                       losses: Sequence[float] | None = None) -> None:
    """Compare a recorded optimizer's steps and layer samples with reference gradients per step.

    ``names[i]`` is the recorded name of the variable whose gradient is ``grads[step][i]``.
    """
    steps = run.steps[run.steps.optimizer == optimizer].reset_index(drop=True)
    assert list(steps.step) == list(range(len(grads)))
    np.testing.assert_allclose(steps.global_norm, [global_norm(g) for g in grads], rtol=rtol)
    if losses is not None:
        np.testing.assert_allclose(steps.loss, losses, rtol=rtol)
    layers = run.layers[run.layers.optimizer == optimizer]
    assert sorted(set(layers.step)) == list(range(0, len(grads), every))
    for step, sample in layers.groupby("step"):
        sample = sample.set_index(sample.name.astype(str)).loc[list(names)]
        np.testing.assert_allclose(sample.norm, norms(grads[step]), rtol=rtol, atol=1e-7)
        np.testing.assert_allclose(sample.maxabs, [np.abs(g).max() for g in grads[step]], rtol=rtol)
        assert (sample.nonfinite == 0).all()
        if params is not None:
            np.testing.assert_allclose(sample.param_norm, norms(params[step]), rtol=rtol, atol=1e-7)


def load(session: Session):
    """The run a closed session wrote."""
    return load_run(session.path)
