"""Update-to-weight findings on runs written through the run store, from signals built here."""

from __future__ import annotations

import numpy as np
import pytest

import gradprobe
from gradprobe.analysis import diagnose
from test_analysis_support import noisy, write_run

LAYERS = ["enc.weight", "enc.bias", "dec.weight", "dec.bias"]
SHAPES = [[8, 8], [8], [8, 8], [8]]


def _run(tmp_path, ratios, norms=None, grads=None, n=400, every=2, loss=None):
    """A healthy gradient history whose sampled steps applied updates of ``ratios`` x the weights."""
    grads = np.stack([noisy(n, 0.5, 0.05, seed=j) for j in range(4)], axis=1) if grads is None else grads
    weights = np.ones((n, 4)) * [4.0, 0.5, 4.0, 0.5]
    writer = write_run(tmp_path, "run", noisy(n, 1.0, 0.05) if norms is None else norms, grads, LAYERS,
                       shapes=SHAPES, every=every, param_norms=weights,
                       loss=np.linspace(2, 1, n) if loss is None else loss)
    sampled = np.arange(0, n, every)
    ratios = np.asarray(ratios, dtype=np.float64)[sampled]
    rows, cols = np.nonzero(np.isfinite(ratios))
    writer.append("updates", {"step": sampled[rows], "optimizer": np.zeros(len(rows)), "rank": np.zeros(len(rows)),
                              "layer": cols, "update_norm": (ratios * weights[sampled])[rows, cols]})
    return gradprobe.load_run(tmp_path / "run")


def _healthy(n=400):
    return np.stack([noisy(n, 1e-3, 0.05, seed=10 + j) for j in range(4)], axis=1)


def test_healthy_updates_raise_nothing_and_read_back_as_ratios(tmp_path):
    ratios = _healthy()
    run = _run(tmp_path, ratios)
    assert not [f for f in diagnose(run) if f.kind in ("update_ratio", "frozen_layer", "decay_only", "update_spike")]
    table = run.updates.sort_values(["step", "layer"])
    expected = ratios[np.arange(0, 400, 2)].reshape(-1)
    assert np.allclose(table["ratio"].to_numpy(), expected, rtol=1e-5)
    assert list(table["name"][:4]) == LAYERS


def test_a_weight_moving_far_too_fast_is_named(tmp_path):
    ratios = _healthy()
    ratios[:, 2] = 0.1  # dec.weight: 100x the rule of thumb
    ratios[:, 1] = 0.5  # a bias moving fast is not flagged (biases start near 0)
    flat = 1.5 + 0.01 * np.sin(np.arange(400))  # the loss does not improve: the steps do harm
    (finding,) = [f for f in diagnose(_run(tmp_path, ratios, loss=flat)) if f.kind == "update_ratio"]
    assert finding.severity == "warning" and finding.layers == ["dec.weight"]
    assert finding.evidence["max_median_ratio"] == pytest.approx(0.1, rel=1e-6)
    assert finding.evidence["loss_improving"] is False


def test_large_steps_while_the_loss_improves_steadily_are_info(tmp_path):
    ratios = _healthy()
    ratios[:, 2] = 0.1  # as the word-language-model recipe (SGD lr 20, clip 0.25) moves its weights
    (finding,) = [f for f in diagnose(_run(tmp_path, ratios, loss=np.linspace(2, 1, 400)))
                  if f.kind == "update_ratio"]
    assert finding.severity == "info" and finding.layers == ["dec.weight"]
    assert finding.evidence["loss_start"] == pytest.approx(np.median(np.linspace(2, 1, 400)[:80]), rel=1e-5)
    assert finding.evidence["loss_improving"] is True
    assert "nothing needs changing" in finding.advice


def test_update_spike_is_reported_with_whether_the_gradient_spiked(tmp_path):
    ratios = _healthy()
    ratios[200, :2] *= 50  # the update jumps at step 200 in the lower layers, the gradient does not
    ratios[300, :] *= 50  # and at step 300 everywhere, with a gradient spike
    norms = noisy(400, 1.0, 0.05)
    norms[300] *= 20
    (finding,) = [f for f in diagnose(_run(tmp_path, ratios, norms=norms)) if f.kind == "update_spike"]
    assert finding.evidence["spike_steps"] == [200, 300]
    assert finding.evidence["gradient_spike_steps"] == [300]
    assert finding.evidence["with_gradient_spike"] == 1
    assert set(finding.layers) == set(LAYERS)  # the worst jump (step 300) is in every layer


def test_a_large_model_measured_a_slice_per_step_has_no_false_update_spike(tmp_path):
    # Beyond the copy bound each sampled step measures a slice: here the weights on one sampled step,
    # the biases on the next. The weights' updates are 8x the biases', which is no spike.
    ratios = _healthy()
    sampled = np.arange(400) // 2
    ratios[(sampled % 2 == 0)[:, None] & np.array([False, True, False, True])] = np.nan
    ratios[(sampled % 2 == 1)[:, None] & np.array([True, False, True, False])] = np.nan
    assert not [f for f in diagnose(_run(tmp_path, ratios)) if f.kind == "update_spike"]
    ratios[300, [0, 2]] *= 50  # a real jump, on a step that measured the weights
    (finding,) = [f for f in diagnose(_run(tmp_path / "spiked", ratios)) if f.kind == "update_spike"]
    assert finding.evidence["spike_steps"] == [300]
    assert set(finding.layers) == {"enc.weight", "dec.weight"}
