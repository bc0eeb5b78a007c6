"""Detectors on runs written through the run store, with expectations computed independently."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import gradprobe
from gradprobe.analysis import diagnose, split_streams
from gradprobe.errors import GradprobeError
from test_analysis_support import noisy, write_run

LAYERS = ["enc.weight", "enc.bias", "dec.weight", "dec.bias"]
SHAPES = [[8, 8], [8], [8, 8], [8]]


def load(tmp_path, name="run"):
    return gradprobe.load_run(tmp_path / name)


def healthy_layers(n, seed=0):
    """Layer norms of similar RMS (norm ~ sqrt(numel) x 0.05), each with its own noise."""
    numel = np.array([64, 8, 64, 8])
    return np.stack([noisy(n, 0.05 * math.sqrt(k), 0.1, seed + j) for j, k in enumerate(numel)], axis=1)


def kinds(findings):
    return {f.kind: f for f in findings}


def test_healthy_synthetic_run_has_no_findings(tmp_path):
    write_run(tmp_path, "run", noisy(500), healthy_layers(500), LAYERS, shapes=SHAPES, every=5,
              loss=np.linspace(2, 0.5, 500))
    assert diagnose(load(tmp_path)) == []


def _growth_from(start, n=400, rate=1.05, spread=0.001):
    """Flat norms, then growing by ``rate`` per step from ``start``: the departure is where they pass 3x
    the baseline (the band's floor, since the noise is far below it)."""
    return np.concatenate([noisy(start, spread=spread, seed=1),
                           noisy(n - start, spread=spread, seed=2) * rate ** np.arange(1, n - start + 1)])


def test_explosion_reports_growth_and_departure(tmp_path):
    norms = _growth_from(300)
    write_run(tmp_path, "run", norms)
    (finding,) = [f for f in diagnose(load(tmp_path)) if f.kind == "explosion"]
    logs = np.log10(norms.astype(np.float32).astype(np.float64))
    expected = 10 ** (np.median(logs[-40:]) - np.median(logs[:80]))  # medians of log norms: last 10%, first 20%
    assert finding.evidence["growth_factor"] == pytest.approx(expected, rel=1e-6)
    departure = int(np.argmax(norms > 3 * np.median(norms[:80])))
    assert departure == 300 + math.ceil(math.log(3) / math.log(1.05)) - 1
    assert finding.evidence["departure_step"] == departure
    assert finding.steps == (departure, 399)
    assert finding.layers == []
    assert finding.severity == "warning"
    assert finding.evidence["slope_decades_per_1k_steps"] == pytest.approx(1000 * math.log10(1.05), rel=0.01)
    assert "gradprobe run --clip global-norm:max=" in finding.advice


@pytest.mark.parametrize("loss_start, loss_end, severity", [(2.0, 0.5, "info"), (0.5, 2.0, "warning")])
def test_explosion_is_info_while_the_loss_steadily_improves(tmp_path, loss_start, loss_end, severity):
    norms = _growth_from(300)
    loss = np.linspace(loss_start, loss_end, 400)
    write_run(tmp_path, "run", norms, loss=loss)
    finding = kinds(diagnose(load(tmp_path)))["explosion"]
    departure = finding.evidence["departure_step"]
    span = loss.astype(np.float32).astype(np.float64)[departure:]
    k = math.ceil(len(span) * 0.2)
    start, end = np.median(span[:k]), np.median(span[-k:])
    assert finding.severity == severity
    assert finding.steps == (departure, 399)
    assert finding.evidence["loss_start"] == pytest.approx(start, rel=1e-6)
    assert finding.evidence["loss_end"] == pytest.approx(end, rel=1e-6)
    assert finding.evidence["loss_change"] == pytest.approx((end - start) / start, rel=1e-6)
    slope = 1000 * (loss_end - loss_start) / 399
    assert finding.evidence["loss_slope_per_1k_steps"] == pytest.approx(slope, rel=1e-3)
    assert finding.evidence["loss_improving"] is (severity == "info")
    assert f"{start:.3g}" in finding.advice and f"{end:.3g}" in finding.advice


def test_fast_explosion_is_critical(tmp_path):
    norms = _growth_from(301, rate=1.1)  # first above 3x at step 312, the start of a 2-step bin
    write_run(tmp_path, "run", norms)
    finding = kinds(diagnose(load(tmp_path)))["explosion"]
    assert finding.severity == "critical"
    assert finding.evidence["peak_norm"] / finding.evidence["baseline_norm"] >= 1000
    departure = 301 + math.ceil(math.log(3) / math.log(1.1)) - 1
    assert finding.steps == (departure, 399)


def test_falling_norms_are_not_an_explosion(tmp_path):
    write_run(tmp_path, "run", noisy(400) * np.logspace(0, -2, 400))
    assert "explosion" not in kinds(diagnose(load(tmp_path)))


def test_layer_explosion_names_the_layer(tmp_path):
    n = 400
    layers = healthy_layers(n)
    level = 0.05 * 8
    # dec.weight: flat (noise far under the 3x band), then 1.05x per step from step 201
    layers[:, 2] = noisy(n, level, 0.001, 7) * 1.05 ** np.clip(np.arange(n) - 201, 0, None)
    write_run(tmp_path, "run", noisy(n), layers, LAYERS, shapes=SHAPES)
    finding = kinds(diagnose(load(tmp_path)))["explosion"]
    assert (finding.kind, finding.layers, finding.evidence["global"]) == ("explosion", ["dec.weight"], False)
    # first above 3x its baseline at 1.05^23 = 3.07 (1.05^22 = 2.93), step 224: the start of a 2-step bin
    departure = 201 + math.ceil(math.log(3) / math.log(1.05))
    assert finding.steps == (departure, n - 1) and finding.evidence["departure_step"] == departure
    logs = np.log10(layers[:, 2].astype(np.float32).astype(np.float64))
    assert finding.evidence["baseline_norm"] == pytest.approx(10 ** np.median(logs[:80]), rel=1e-6)
    assert finding.evidence["final_norm"] == pytest.approx(10 ** np.median(logs[-40:]), rel=1e-6)
    assert finding.evidence["peak_norm"] == pytest.approx(layers[-1, 2], rel=1e-6)
    assert finding.severity == "critical"  # peak 1.05^198 over the baseline, far past 1,000x
    assert finding.evidence["slope_decades_per_1k_steps"] == pytest.approx(1000 * math.log10(1.05), rel=0.01)


@pytest.mark.parametrize("factor, severity", [(50.0, "warning"), (5.0, "info"), (5000.0, "critical")])
def test_isolated_spike(tmp_path, factor, severity):
    norms = noisy(300, spread=0.05)
    norms[200] *= factor
    write_run(tmp_path, "run", norms)
    finding = kinds(diagnose(load(tmp_path)))["spike"]
    assert finding.steps == (200, 200)
    assert finding.severity == severity
    assert finding.evidence["max_ratio"] == pytest.approx(norms[200] / np.median(norms[100:200]), rel=1e-4)


def test_lasting_jump_is_not_a_spike(tmp_path):
    norms = noisy(400, spread=0.05)
    norms[300:] *= 50
    write_run(tmp_path, "run", norms)
    found = kinds(diagnose(load(tmp_path)))
    assert "spike" not in found
    assert found["explosion"].evidence["departure_step"] == 300


def test_spikes_on_skipped_steps_are_ignored(tmp_path):
    norms = noisy(300, spread=0.05)
    norms[200] *= 100
    skipped = np.zeros(300, bool)
    skipped[200] = True
    write_run(tmp_path, "run", norms, skipped=skipped)
    assert "spike" not in kinds(diagnose(load(tmp_path)))


def test_nonfinite_origin_is_first_layer_in_backward_order(tmp_path):
    n = 100
    norms = noisy(n)
    norms[50:] = np.inf
    layers = healthy_layers(n)
    counts = np.zeros_like(layers)
    layers[50:, :3] = np.nan  # enc.weight, enc.bias, dec.weight hold NaN (dec.bias is fine)
    counts[50:, :3] = 3
    loss = np.linspace(2, 1, n)
    write_run(tmp_path, "run", norms, np.where(np.isnan(layers), 1.0, layers), LAYERS, shapes=SHAPES,
              nonfinite=counts, loss=loss)
    finding = kinds(diagnose(load(tmp_path)))["nonfinite"]
    assert finding.severity == "critical"
    assert finding.steps == (50, 99)
    assert finding.layers == ["dec.weight", "enc.bias", "enc.weight"]
    assert finding.evidence["first_layer_step"] == 50
    assert "the loss was finite, so the backward pass made it: it starts in dec.weight" in finding.advice
    assert finding.evidence["nonfinite_steps"] == 50
    assert finding.evidence["last_finite_norm"] == pytest.approx(norms[49], rel=1e-6)
    assert finding.evidence["first_loss_nonfinite_step"] is None
    assert "dec.weight" in finding.advice


def test_nonfinite_loss_first_points_at_the_forward_pass(tmp_path):
    norms, loss = noisy(60), np.linspace(2, 1, 60)
    norms[30:], loss[29:] = np.nan, np.nan
    write_run(tmp_path, "run", norms, loss=loss)
    finding = kinds(diagnose(load(tmp_path)))["nonfinite"]
    assert (finding.severity, finding.layers, finding.steps) == ("critical", [], (30, 59))
    assert finding.evidence["first_loss_nonfinite_step"] == 29
    assert (finding.evidence["nonfinite_steps"], finding.evidence["applied_steps"]) == (30, 30)
    assert finding.evidence["last_finite_norm"] == pytest.approx(norms[29], rel=1e-6)
    assert "step 29, so it came from that step's batch or the forward pass" in finding.advice
    assert "gradprobe run --clip zclip:z=2.5+skip:sigma=6 synthetic.py" in finding.advice


@pytest.mark.parametrize("overflows, severity", [(2, "info"), (20, "warning")])
def test_skipped_overflows_are_info_or_warning(tmp_path, overflows, severity):
    norms = noisy(200)
    skipped = np.zeros(200, bool)
    where = np.linspace(10, 190, overflows).astype(int)
    norms[where], skipped[where] = np.inf, True
    write_run(tmp_path, "run", norms, skipped=skipped)
    finding = kinds(diagnose(load(tmp_path)))["nonfinite"]
    assert (finding.severity, finding.layers, finding.steps) == (severity, [], (where[0], where[-1]))
    assert finding.evidence["applied_steps"] == 0
    assert (finding.evidence["nonfinite_steps"], finding.evidence["skipped_steps"]) == (overflows, overflows)
    assert finding.evidence["fraction"] == pytest.approx(overflows / 200)
    assert ("GradScaler(init_scale" in finding.advice) is (severity == "warning")


def _levels_to_norms(levels, numel, n, seed=0):
    """Layer norms whose median log10 RMS is ``levels`` (per layer)."""
    return np.stack([noisy(n, 10.0**lv * math.sqrt(k), 0.05, seed + j)
                     for j, (lv, k) in enumerate(zip(levels, numel))], axis=1)


@pytest.mark.parametrize("step, severity", [(1.4, "critical"), (0.6, "warning")])
def test_attenuation_from_output_to_input(tmp_path, step, severity):
    names = [f"l{i}.weight" for i in range(6)]
    levels = -1 - step * np.arange(6)[::-1]
    norms = _levels_to_norms(levels, [64] * 6, 50)
    write_run(tmp_path, "run", noisy(50), norms, names, shapes=[[8, 8]] * 6, groups=["net"] * 6)
    finding = kinds(diagnose(load(tmp_path)))["vanishing"]
    rms = np.log10(np.median(norms, axis=0) / 8)
    expected = np.median(rms[-2:]) - np.median(rms[:2])
    assert finding.evidence["attenuation_decades"] == pytest.approx(expected, abs=1e-3)
    assert finding.evidence["depth_slope_decades_per_layer"] == pytest.approx(step, abs=0.01)
    assert (finding.severity, finding.steps) == (severity, (0, 49))
    weak = [names[j] for j in range(6) if rms[j] <= np.median(rms[-2:]) - 2]
    assert finding.layers == weak and "l0.weight" in weak


@pytest.mark.parametrize("low_layer, severity", [("enc.bias", "info"), ("enc.weight", "warning")])
def test_layer_far_below_the_rest(tmp_path, low_layer, severity):
    levels = np.full(4, -1.5)
    levels[LAYERS.index(low_layer)] = -5.0
    norms = _levels_to_norms(levels, [64, 8, 64, 8], 50)
    write_run(tmp_path, "run", noisy(50), norms, LAYERS, shapes=SHAPES, groups=["net"] * 4)
    finding = kinds(diagnose(load(tmp_path)))["vanishing"]
    assert (finding.severity, finding.layers, finding.steps) == (severity, [low_layer], (0, 49))
    rms = np.median(np.log10(norms.astype(np.float32)), axis=0) - 0.5 * np.log10([64, 8, 64, 8])
    assert finding.evidence["max_below_rest_decades"] == pytest.approx(np.median(rms) - rms.min(), abs=1e-4)


def test_layer_share_decaying_over_the_run(tmp_path):
    n = 200
    norms = healthy_layers(n)
    norms[:, 0] *= np.logspace(0, -3, n)
    write_run(tmp_path, "run", noisy(n), norms, LAYERS, shapes=SHAPES, groups=["net"] * 4)
    finding = kinds(diagnose(load(tmp_path)))["vanishing"]
    assert (finding.severity, finding.layers, finding.steps) == ("warning", ["enc.weight"], (0, n - 1))
    share = np.log10(norms[:, 0].astype(np.float32)) - np.log10(noisy(n).astype(np.float32))
    decay = np.median(share[:40]) - np.median(share[-40:])  # first and last 20% of the sampled steps
    assert decay > 2 and finding.evidence["max_decay_decades"] == pytest.approx(decay, abs=1e-4)


@pytest.mark.parametrize("loss_end, expect", [(1.95, True), (0.2, False)])
def test_global_decay_is_vanishing_only_while_loss_is_stuck(tmp_path, loss_end, expect):
    n = 200
    norms, loss = noisy(n) * np.logspace(0, -4, n), np.linspace(2.0, loss_end, n)
    write_run(tmp_path, "run", norms, loss=loss)
    finding = kinds(diagnose(load(tmp_path))).get("vanishing")
    assert (finding is not None) is expect
    if expect:
        assert (finding.severity, finding.layers, finding.steps) == ("warning", [], (0, n - 1))
        logs, loss32 = np.log10(norms.astype(np.float32)), loss.astype(np.float32).astype(np.float64)
        assert finding.evidence["global_decay_decades"] == pytest.approx(
            np.median(logs[:40]) - np.median(logs[-40:]), abs=1e-4)
        start, end = np.median(loss32[:40]), np.median(loss32[-40:])
        assert finding.evidence["loss_improvement"] == pytest.approx((start - end) / start, rel=1e-5)


def test_dead_layers_absent_zero_and_died(tmp_path):
    n = 100
    norms = healthy_layers(n)
    norms[:, 0] = np.nan          # never had a gradient
    norms[:, 1] = 0.0             # always exactly zero
    norms[70:, 2] = 0.0           # died for the last 30%
    norms[95:, 3] = 0.0           # zero only for the last 5%: alive
    write_run(tmp_path, "run", noisy(n), norms, LAYERS, shapes=SHAPES)
    finding = kinds(diagnose(load(tmp_path)))["dead_layer"]
    assert finding.layers == ["enc.weight", "enc.bias", "dec.weight"]
    assert (finding.evidence["absent"], finding.evidence["all_zero"], finding.evidence["died"]) == (1, 1, 1)
    assert finding.evidence["param_fraction"] == pytest.approx((64 + 8 + 64) / 144)
    assert (finding.severity, finding.steps, finding.evidence["sampled_steps"]) == ("critical", (0, 99), 100)
    assert "stopped receiving gradient from step 70" in finding.advice
    assert "gradprobe run --clip zclip:z=2.5+skip:sigma=6 synthetic.py" in finding.advice


def test_a_layer_that_dies_is_dated_from_its_death(tmp_path):
    n = 100
    norms = healthy_layers(n)
    norms[60:, 2:] = 0.0  # dec.weight and dec.bias die at step 60 (40% of the run)
    write_run(tmp_path, "run", noisy(n), norms, LAYERS, shapes=SHAPES)
    finding = kinds(diagnose(load(tmp_path)))["dead_layer"]
    assert (finding.severity, finding.layers, finding.steps) == ("critical", ["dec.weight", "dec.bias"], (60, 99))
    assert (finding.evidence["absent"], finding.evidence["all_zero"], finding.evidence["died"]) == (0, 0, 2)
    assert finding.evidence["param_fraction"] == pytest.approx(72 / 144)


def _clip_case(tmp_path, norms, threshold, post=None):
    with np.errstate(divide="ignore"):
        scale = np.minimum(1.0, threshold / norms)
    write_run(tmp_path, "run", norms, clip_threshold=np.full(len(norms), threshold), clip_scale=scale,
              global_norm_post=norms * scale if post is None else post)
    return kinds(diagnose(load(tmp_path))).get("clip_saturation")


def test_clipping_every_step_is_a_learning_rate_cut(tmp_path):
    norms = noisy(100)
    finding = _clip_case(tmp_path, norms, 0.3)
    assert finding.severity == "warning"
    assert (finding.layers, finding.steps) == ([], (0, 99))
    assert finding.evidence["clipped_fraction"] == 1.0
    assert finding.evidence["mean_scale"] == pytest.approx(np.mean(0.3 / norms), rel=1e-5)
    assert "no loss recorded" in finding.advice
    spec = f"global-norm:max={np.percentile(norms.astype(np.float32), 95):.3g}"
    assert f"gradprobe run --clip {spec} synthetic.py" in finding.advice


@pytest.mark.parametrize("loss, severity", [
    (np.linspace(4.0, 2.0, 100), "info"),                       # the clip is part of a recipe that trains
    (3.0 + 0.01 * np.sin(np.arange(100)), "warning"),           # training stalls under the clip
    (np.linspace(2.0, 4.0, 100), "warning"),                    # the clip hides a divergence
])
def test_clipping_every_step_is_judged_by_the_loss(tmp_path, loss, severity):
    norms = noisy(100)
    with np.errstate(divide="ignore"):
        scale = np.minimum(1.0, 0.3 / norms)
    write_run(tmp_path, "run", norms, clip_threshold=np.full(100, 0.3), clip_scale=scale,
              global_norm_post=norms * scale, loss=loss)
    finding = kinds(diagnose(load(tmp_path)))["clip_saturation"]
    assert finding.severity == severity
    assert finding.steps == (0, 99)
    k = 20
    loss32 = loss.astype(np.float32).astype(np.float64)
    start, end = np.median(loss32[:k]), np.median(loss32[-k:])
    assert finding.evidence["loss_change"] == pytest.approx((end - start) / start, rel=1e-5)
    assert finding.evidence["loss_improving"] is (severity == "info")


def test_autoclip_as_recommended_is_not_a_saturation_warning(tmp_path):
    norms = noisy(300, spread=0.02) * np.linspace(1.0, 2.0, 300)  # norms drifting up: AutoClip clips ~always
    write_run(tmp_path, "plain", norms, loss=np.linspace(3.0, 1.0, 300))
    (autoclip,) = [r for r in gradprobe.analysis.recommend(split_streams(load(tmp_path, "plain")))
                   if r.strategy == "autoclip"]
    replay = autoclip.replay
    assert autoclip.spec == "autoclip:p=10" and replay.clipped_fraction >= 0.9
    for name, loss, severity in (("trains", np.linspace(3.0, 1.0, 300), "info"),
                                 ("stalls", np.full(300, 3.0), "warning")):
        write_run(tmp_path, name, norms, clip_threshold=replay.threshold, clip_scale=replay.scale,
                  global_norm_post=replay.post_norm, loss=loss)
        finding = kinds(diagnose(load(tmp_path, name)))["clip_saturation"]
        assert finding.severity == severity
        assert finding.evidence["clipped_fraction"] == pytest.approx(replay.clipped_fraction)


def test_clipping_that_never_fires(tmp_path):
    norms = noisy(100)
    far = _clip_case(tmp_path, norms, 100.0)
    assert far.severity == "warning"
    assert (far.layers, far.steps) == ([], (0, 99))
    assert far.evidence["clipped_fraction"] == 0.0
    assert far.evidence["max_norm_over_threshold"] == pytest.approx(norms.max() / 100, rel=1e-5)
    spec = f"global-norm:max={np.percentile(norms.astype(np.float32), 95):.3g}"
    assert f"gradprobe run --clip {spec} synthetic.py" in far.advice and "gradprobe tune synthetic.py" in far.advice


def test_clipping_that_never_fires_near_the_norms_is_info(tmp_path):
    norms = noisy(100)
    finding = _clip_case(tmp_path, norms, float(norms.max()) * 1.2)
    assert (finding.severity, finding.layers, finding.steps) == ("info", [], (0, 99))
    assert finding.evidence["max_norm_over_threshold"] == pytest.approx(1 / 1.2, rel=1e-5)


def test_the_guard_recommend_proposes_for_a_healthy_run_never_draws_a_warning(tmp_path):
    norms = noisy(200)
    write_run(tmp_path, "plain", norms, loss=np.linspace(3.0, 1.0, 200))
    (first,) = [r for r in gradprobe.analysis.recommend(split_streams(load(tmp_path, "plain")))
                if r.strategy == "first-choice"]
    guard = float(first.spec.removeprefix("global-norm:max="))
    assert guard == pytest.approx(2 * norms.astype(np.float32).max(), rel=1e-3)
    # rerun under that guard, with norms whose largest comes out 30% lower: a net that was not needed
    rerun = 0.7 * norms
    write_run(tmp_path, "guarded", rerun, clip_threshold=np.full(200, guard), clip_scale=np.ones(200),
              loss=np.linspace(3.0, 1.0, 200))
    finding = kinds(diagnose(load(tmp_path, "guarded")))["clip_saturation"]
    assert (finding.severity, finding.steps, finding.evidence["clipped_fraction"]) == ("info", (0, 199), 0.0)
    assert finding.evidence["max_norm_over_threshold"] == pytest.approx(0.7 / 2, rel=1e-3)
    assert "nothing to change" in finding.advice


def test_clipping_given_no_parameters(tmp_path):
    norms = noisy(100)
    finding = _clip_case(tmp_path, np.zeros(100), 1.0, post=norms)
    assert (finding.severity, finding.layers, finding.steps) == ("critical", [], (0, 99))
    assert (finding.evidence["empty_fraction"], finding.evidence["threshold"]) == (1.0, 1.0)
    assert finding.evidence["median_post_norm"] == pytest.approx(np.median(norms), rel=1e-5)
    assert "gradprobe run --clip global-norm:max=1 synthetic.py" in finding.advice


def test_occasional_clipping_is_fine(tmp_path):
    norms = noisy(100)
    assert _clip_case(tmp_path, norms, float(np.percentile(norms, 90))) is None


def test_imbalance_between_recorded_groups(tmp_path):
    n = 100
    norms = _levels_to_norms([-1, -1, -4, -4], [64, 8, 64, 8], n)
    write_run(tmp_path, "run", noisy(n), norms, LAYERS, shapes=SHAPES)
    finding = kinds(diagnose(load(tmp_path)))["imbalance"]
    rms = lambda cols, k: np.sqrt((norms[:, cols] ** 2).sum(axis=1) / k)  # noqa: E731
    ratio = rms([0, 1], 72) / rms([2, 3], 72)
    assert finding.evidence["ratio_median"] == pytest.approx(np.median(ratio), rel=1e-4)
    assert finding.layers == ["dec.weight", "dec.bias"]
    assert (finding.severity, finding.steps, finding.evidence["fraction"]) == ("warning", (0, n - 1), 1.0)
    rms_enc = np.median(np.log10(rms([0, 1], 72).astype(np.float64)))
    assert finding.evidence["rms:enc"] == pytest.approx(10**rms_enc, rel=1e-4)
    assert finding.evidence["rms:enc"] > finding.evidence["rms:dec"]
    spec = f"layer-norm:max={np.percentile(norms[:, 2:].astype(np.float32), 95):.3g}"
    assert f"gradprobe run --clip {spec} synthetic.py" in finding.advice


def test_imbalance_with_user_groups_and_its_start(tmp_path):
    n = 200
    norms = healthy_layers(n)
    norms[100:, 2:] *= 1e-3
    write_run(tmp_path, "run", noisy(n), norms, LAYERS, shapes=SHAPES, groups=["net"] * 4)
    run = load(tmp_path)
    assert "imbalance" not in kinds(diagnose(run))
    finding = kinds(diagnose(run, ["a=enc.*", "b=dec.*"]))["imbalance"]
    assert (finding.severity, finding.layers, finding.steps) == ("warning", ["dec.weight", "dec.bias"], (100, 199))
    assert finding.evidence["fraction"] == pytest.approx(0.5)


def test_user_group_errors_are_one_line(tmp_path):
    write_run(tmp_path, "run", noisy(50), healthy_layers(50), LAYERS, shapes=SHAPES)
    run = load(tmp_path)
    with pytest.raises(GradprobeError, match="matches no layer; layer names look like: enc.weight"):
        diagnose(run, ["x=nothing*"])
    with pytest.raises(GradprobeError, match="expected NAME=GLOB"):
        diagnose(run, ["no-equals-sign"])


def test_each_optimizer_is_analysed_on_its_own(tmp_path):
    calm = noisy(300, seed=3)
    wild = np.concatenate([noisy(200, seed=4), noisy(100, seed=5) * 1.1 ** np.arange(1, 101)])
    layers = [{"id": i, "name": nm, "shape": [4, 4], "numel": 16, "dtype": "float32", "group": nm[0],
               "optimizer": i} for i, nm in enumerate(["g.w", "d.w"])]
    writer = write_run(tmp_path, "run", calm, np.c_[noisy(300, 0.5, seed=6)], ["g.w"])
    writer.update(layers=layers, optimizers=[{"index": 0}, {"index": 1}])
    write_run(tmp_path, "run", wild, np.c_[wild * 0.9], ["d.w"], optimizer=1, writer=writer, layer_offset=1)
    run = load(tmp_path)
    streams = split_streams(run)
    assert [(s.optimizer, s.names, len(s.steps)) for s in streams] == [(0, ["g.w"], 300), (1, ["d.w"], 300)]
    findings = diagnose(run)
    assert {f.evidence["optimizer"] for f in findings} == {1}
    assert kinds(findings)["explosion"].layers == ["d.w"]


def test_lowest_rank_stands_for_the_run(tmp_path):
    writer = write_run(tmp_path, "run", noisy(300))
    wild = np.concatenate([noisy(200), 1.1 ** np.arange(1, 101)])
    write_run(tmp_path, "run", wild, writer=writer, rank=1)
    assert diagnose(load(tmp_path)) == []


def test_findings_serialise_to_strict_json(tmp_path):
    norms = noisy(100)
    norms[40:] = np.nan
    write_run(tmp_path, "run", norms)
    (finding,) = diagnose(load(tmp_path))
    data = json.loads(json.dumps(finding.to_dict(), allow_nan=False))
    assert data["evidence"]["first_loss_nonfinite_step"] is None
    assert data["steps"] == [40, 99]


@pytest.mark.parametrize("loss_rises", [True, False])
def test_rebound_from_a_trough_is_an_explosion_only_while_the_loss_diverges(tmp_path, loss_rises):
    # norms fall 1,000x over 200 steps (convergence), stay, then grow 1.1x per step from step 300
    falling = 10 ** np.linspace(0, -3, 200)
    flat = np.full(100, 1e-3)
    rising = 1e-3 * 1.1 ** np.arange(1, 101)
    norms = np.concatenate([falling, flat, rising]) * noisy(400, spread=0.001, seed=3)
    loss = np.concatenate([np.linspace(2.0, 0.1, 300), np.linspace(0.1, 0.5 if loss_rises else 0.1, 100)])
    write_run(tmp_path, "run", norms, loss=loss)
    finding = kinds(diagnose(load(tmp_path))).get("explosion")
    if not loss_rises:
        assert finding is None
        return
    departure = 300 + math.ceil(math.log(3) / math.log(1.1)) - 1  # 3x the trough of 1e-3
    assert finding.evidence["from_trough"] is True
    assert finding.evidence["baseline_norm"] == pytest.approx(1e-3, rel=0.01)
    assert finding.steps == (departure, 399)
    assert finding.severity == "critical"  # peak 1.1^100 = 13,780x the trough
    assert finding.evidence["loss_change"] > 0.1


def test_consequences_of_nan_and_double_reports_are_dropped():
    from gradprobe.analysis.diagnose import one_finding_per_cause
    from gradprobe.analysis.findings import Finding

    def make(kind, severity, first, layers=(), optimizer=0):
        return Finding(kind, severity, list(layers), (first, 99), {"optimizer": optimizer})

    nan = make("nonfinite", "critical", 21)
    before, after = make("explosion", "warning", 5), make("dead_layer", "critical", 30, ["a.w"])
    other_optimizer = make("dead_layer", "warning", 30, ["b.w"], optimizer=1)
    kept = one_finding_per_cause([nan, before, after, other_optimizer])
    assert kept == [nan, before, other_optimizer]
    starved = make("imbalance", "critical", 0, ["head.w", "head.b"])
    assert one_finding_per_cause([starved, make("vanishing", "warning", 0, ["head.w"])]) == [starved]
    deep = make("vanishing", "critical", 0, ["l0.w", "l1.w", "l2.w"])
    assert one_finding_per_cause([make("imbalance", "critical", 0, ["l1.w", "l1.b"]), deep]) == [deep]
    assert one_finding_per_cause([make("stalled_layer", "warning", 0, ["l0.w", "l1.w"]), deep]) == [deep]
    stalled = make("stalled_layer", "warning", 0, ["head.w"])
    assert one_finding_per_cause([stalled, deep]) == [stalled, deep]
    assert one_finding_per_cause([make("frozen_layer", "warning", 0, ["l0.w"]), deep]) == [deep]


@pytest.mark.parametrize("cause", [("explosion", "warning"), ("nonfinite", "critical"), ("vanishing", "warning")])
def test_large_steps_beside_the_finding_that_explains_the_loss_are_info(cause):
    from gradprobe.analysis.diagnose import one_finding_per_cause
    from gradprobe.analysis.findings import Finding

    explained = Finding(*cause, [], (10, 99), {"optimizer": 0})
    fast = Finding("update_ratio", "warning", ["head.w"], (0, 99), {"optimizer": 0, "max_median_ratio": 0.2}, "slow down.")
    other = Finding("update_ratio", "warning", ["b.w"], (0, 99), {"optimizer": 1}, "slow down.")
    kept = one_finding_per_cause([explained, fast, other])
    assert [(f.kind, f.severity, f.layers) for f in kept] == [
        (cause[0], cause[1], []), ("update_ratio", "info", ["head.w"]), ("update_ratio", "warning", ["b.w"])]
    assert kept[1].evidence == fast.evidence and kept[1].advice.startswith("slow down.")
    assert f"The {cause[0]} finding explains the loss" in kept[1].advice
    assert one_finding_per_cause([Finding(cause[0], "info", [], (10, 99), {"optimizer": 0}), fast])[1] is fast


def test_a_layer_whose_share_falls_only_because_others_grow_is_not_vanishing(tmp_path):
    n = 200
    norms = healthy_layers(n)
    norms[:, 1:] *= np.logspace(0, 3, n)[:, None]  # every other layer grows 1,000x; enc.weight stays flat
    global_norm = np.sqrt((norms**2).sum(axis=1))
    write_run(tmp_path, "run", global_norm, norms, LAYERS, shapes=SHAPES, groups=["net"] * 4)
    found = kinds(diagnose(load(tmp_path)))
    assert "enc.weight" not in (found["vanishing"].layers if "vanishing" in found else [])
    assert found["explosion"].layers[0] in LAYERS[1:]


def test_a_layer_that_gets_gradient_but_never_moves_is_stalled(tmp_path):
    n = 100
    params = np.ones((n, 4)) * np.array([3.0, 1.0, 2.0, 0.5])
    params[:, 0] *= np.linspace(1.0, 1.1, n)          # enc.weight trains: its norm moves 10%
    params[:, 2] *= np.linspace(1.0, 1.0 + 1e-4, n)   # dec.weight moves 1e-4: slow, but moving
    # enc.bias and dec.bias (columns 1 and 3) stay exactly where they were, but dec.bias gets a gradient
    # 1,000x under the others (3 decades: vanishing, too small to move it visibly), so only enc.bias stalled
    grads = healthy_layers(n)
    grads[:, 3] *= 1e-3
    write_run(tmp_path, "run", noisy(n), grads, LAYERS, shapes=SHAPES, every=5, param_norms=params)
    finding = kinds(diagnose(load(tmp_path)))["stalled_layer"]
    assert (finding.severity, finding.layers, finding.steps) == ("warning", ["enc.bias"], (0, 95))
    assert finding.evidence["max_relative_movement"] == 0.0
    moved = [(params[::5, j].max() - params[::5, j].min()) / np.median(params[::5, j]) for j in (0, 2, 3)]
    assert finding.evidence["median_relative_movement_others"] == pytest.approx(np.median(moved), rel=1e-4)


def test_nothing_is_stalled_when_no_layer_moves(tmp_path):
    write_run(tmp_path, "run", noisy(100), healthy_layers(100), LAYERS, shapes=SHAPES, every=5)
    assert "stalled_layer" not in kinds(diagnose(load(tmp_path)))
