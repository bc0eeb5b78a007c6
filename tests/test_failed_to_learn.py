"""A loss that blew up and never got below its start: the finding, its limits, and what it explains."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradprobe
from gradprobe.analysis import diagnose, split_streams
from gradprobe.analysis.diagnose import one_finding_per_cause
from gradprobe.analysis.findings import Finding
from gradprobe.analysis.first_choice import first_choice
from test_analysis_support import noisy, write_run

N = 300


def _loss(blown: int, level_after: float, first: float = 2.0, at: int = 1, factor: float = 1e4) -> np.ndarray:
    """``first`` at step 0, ``blown`` steps at ``factor`` x it from step ``at``, then ``level_after`` x it."""
    loss = first * level_after * noisy(N, spread=0.05, seed=3)
    loss[:at] = first
    loss[at:at + blown] = first * factor * noisy(blown, spread=0.2, seed=4)
    return loss


def _findings(tmp_path, loss, norms=None):
    write_run(tmp_path, "run", noisy(N, seed=1) if norms is None else norms, loss=loss)
    return [f for f in diagnose(gradprobe.load_run(tmp_path / "run")) if f.kind == "failed_to_learn"]


def test_a_sustained_blow_up_that_settles_at_the_start_level_is_critical(tmp_path):
    loss = _loss(blown=20, level_after=0.95)
    (finding,) = _findings(tmp_path, loss)
    stored = loss.astype(np.float32).astype(np.float64)
    final = float(np.median(stored[-math.ceil(N * 0.2):]))
    assert (finding.severity, finding.layers, finding.steps) == ("critical", [], (1, N - 1))
    assert finding.evidence["first_loss"] == pytest.approx(2.0)
    assert finding.evidence["peak_loss"] == pytest.approx(stored.max())
    assert finding.evidence["peak_step"] == int(np.argmax(stored))
    assert finding.evidence["final_loss"] == pytest.approx(final)
    assert finding.evidence["final_over_first"] == pytest.approx(final / 2.0)
    assert finding.evidence["blow_up_factor"] == pytest.approx(stored.max() / 2.0)
    assert "Lower the learning rate" in finding.advice and "gradprobe tune synthetic.py" in finding.advice


@pytest.mark.parametrize("blown, level_after, factor, found", [
    (10, 0.9, 1e4, True),  # exactly SUSTAINED steps
    (9, 0.9, 1e4, False),  # one fewer: a burst of bad batches, not a wreck
    (30, 0.45, 1e4, False),  # came back below half its start: it learned
    (30, 0.9, 99.0, False),  # under BLOW_UP_FACTOR
])
def test_the_thresholds(tmp_path, blown, level_after, factor, found):
    assert bool(_findings(tmp_path, _loss(blown, level_after, factor=factor))) is found


def test_isolated_spikes_of_corrupt_batches_are_not_a_failure(tmp_path):
    loss = _loss(blown=0, level_after=0.9)
    loss[::7] = 2.0 * 4e4  # every 7th batch corrupt: each a spike, the steps around them low
    assert _findings(tmp_path, loss) == []


def test_a_negative_first_loss_is_not_judged(tmp_path):
    loss = -_loss(blown=20, level_after=0.95)
    assert _findings(tmp_path, loss) == []


def _finding(kind, severity="warning", optimizer=0, start=0):
    return Finding(kind=kind, severity=severity, layers=["0.weight"] if kind == "vanishing" else [],
                   steps=(start, 299), evidence={"optimizer": optimizer})


def test_it_explains_the_wrecked_layers_of_its_optimizer():
    wreck, vanishing, other = _finding("failed_to_learn", "critical", start=1), _finding("vanishing"), \
        _finding("dead_layer", optimizer=1)
    ratio = _finding("update_ratio")
    kept = one_finding_per_cause([wreck, vanishing, other, ratio])
    assert [f.kind for f in kept] == ["failed_to_learn", "dead_layer", "update_ratio"]
    assert kept[2].severity == "info" and "failed to learn finding explains the loss" in kept[2].advice


@pytest.mark.parametrize("cause", [("explosion", "warning"), ("nonfinite", "critical")])
def test_an_explosion_or_nan_is_the_finding_instead(cause):
    wreck, found = _finding("failed_to_learn", "critical", start=1), _finding(*cause)
    assert [f.kind for f in one_finding_per_cause([wreck, found])] == [cause[0]]


def test_recommend_reads_no_healthy_history_from_a_wrecked_start(tmp_path):
    write_run(tmp_path, "run", noisy(N, seed=1), loss=_loss(blown=20, level_after=0.95))  # no norm jump
    run = gradprobe.load_run(tmp_path / "run")
    (stream,) = split_streams(run)
    spec, reason = first_choice(stream, diagnose(run))
    assert spec == "global-norm:max=1"
    assert reason.startswith("Trouble from the start (failed_to_learn from step 1, 1 healthy steps before it)")
