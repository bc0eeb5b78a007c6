"""Clip policies: the spec grammar, replay on recorded history, and the PyTorch clipper API."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradprobe
from gradprobe.errors import GradprobeError
from gradprobe.policies import (
    AGC, POLICIES, AutoClip, Composite, GlobalNorm, LayerNorm, Skip, ZClip, parse_spec, replay_run, usage,
)
from gradprobe import clipper
from gradprobe.pytorch.clip import apply_torch, init_state, step_unless_skipped

# -- spec grammar ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, canonical",
    [
        ("global-norm:max=1.0", "global-norm:max=1,norm=2"),
        ("global-norm:max=0.25,norm=inf", "global-norm:max=0.25,norm=inf"),
        ("global-norm:max=1e+3", "global-norm:max=1000,norm=2"),
        ("  Global-Norm : MAX = 2 ", "global-norm:max=2,norm=2"),
        ("layer-norm:max=0.5", "layer-norm:max=0.5"),
        ("value:max=0.1", "value:max=0.1"),
        ("scaled-value:c=3", "scaled-value:c=3"),
        ("sign:max=1e-4", "sign:max=0.0001"),
        ("autoclip:p=10", "autoclip:p=10,warmup=0,window=1000"),
        ("autoclip:p=100,warmup=5,window=50", "autoclip:p=100,warmup=5,window=50"),
        ("zclip", "zclip:z=2.5,alpha=0.97,warmup=25,mode=reciprocal"),
        ("zclip:z=3,alpha=0.9,warmup=10,mode=threshold", "zclip:z=3,alpha=0.9,warmup=10,mode=threshold"),
        ("agc:lambda=0.01", "agc:lambda=0.01,eps=0.001"),
        ("skip:sigma=6", "skip:sigma=6,window=128,warmup=128"),
        ("skip:sigma=6,window=64", "skip:sigma=6,window=64,warmup=64"),
        ("zclip:z=2.5+skip:sigma=6",
         "zclip:z=2.5,alpha=0.97,warmup=25,mode=reciprocal+skip:sigma=6,window=128,warmup=128"),
        ("skip:sigma=4,window=8 + layer-norm:max=1", "layer-norm:max=1+skip:sigma=4,window=8,warmup=8"),
    ],
)
def test_spec_canonical_form_and_round_trip(spec, canonical):
    policy = parse_spec(spec)
    assert str(policy) == canonical
    assert parse_spec(canonical) == policy


def test_spec_builds_the_documented_objects_and_defaults():
    assert parse_spec("global-norm:max=1.5") == GlobalNorm(max=1.5, norm="2")
    assert parse_spec("autoclip:p=10") == AutoClip(p=10.0, warmup=0, window=1000)
    assert parse_spec("zclip") == ZClip(z=2.5, alpha=0.97, warmup=25, mode="reciprocal")
    assert parse_spec("agc:lambda=0.02") == AGC(lam=0.02, eps=1e-3)
    assert parse_spec("skip:sigma=6") == Skip(sigma=6.0, window=128, warmup=128)
    composed = parse_spec("zclip:z=2.5+skip:sigma=6")
    assert composed == Composite(ZClip(z=2.5), Skip(sigma=6.0))
    assert parse_spec("global-norm:max=2,norm=inf").uses_maxabs


def test_usage_lines_document_every_policy():
    assert usage(GlobalNorm) == "global-norm:max=X[,norm=2|inf]"
    assert usage(ZClip) == "zclip[:z=2.5][,alpha=0.97][,warmup=25][,mode=reciprocal|threshold]"
    assert usage(Skip) == "skip:sigma=X[,window=128][,warmup=window]"
    assert sorted(POLICIES) == sorted(["global-norm", "layer-norm", "value", "scaled-value", "sign", "autoclip",
                                       "zclip", "agc", "skip"])


@pytest.mark.parametrize(
    "spec, fragments",
    [
        ("", ["empty clip spec", "global-norm"]),
        ("   ", ["empty clip spec"]),
        ("foo:max=1", ["unknown clip policy 'foo'", "valid policies: global-norm, layer-norm"]),
        ("global_norm:max=1", ["unknown clip policy 'global_norm'", "did you mean 'global-norm'"]),
        ("+global-norm:max=1", ["missing policy name"]),
        ("global-norm", ["global-norm: missing required key 'max'", "valid keys: max, norm"]),
        ("global-norm:", ["global-norm: expected key=value"]),
        ("global-norm:max", ["global-norm: expected key=value, got 'max'"]),
        ("global-norm:maxx=1", ["global-norm: unknown key 'maxx'", "valid keys: max, norm",
                                "usage: global-norm:max=X[,norm=2|inf]"]),
        ("global-norm:max=abc", ["global-norm: max='abc' is not a number"]),
        ("global-norm:max=1+", ["global-norm: max='1+' is not a number"]),
        ("global-norm:max=-1", ["global-norm: max must be > 0 (got -1)"]),
        ("global-norm:max=0", ["global-norm: max must be > 0 (got 0)"]),
        ("global-norm:max=inf", ["global-norm: max must be a finite number"]),
        ("global-norm:max=nan", ["global-norm: max must be a finite number"]),
        ("global-norm:max=1,norm=3", ["global-norm: norm='3' is not valid; choose one of 2, inf"]),
        ("global-norm:max=1,max=2", ["global-norm: key 'max' given twice"]),
        ("layer-norm:max=-0.5", ["layer-norm: max must be > 0"]),
        ("value:max=0", ["value: max must be > 0"]),
        ("scaled-value:max=1", ["scaled-value: unknown key 'max'", "valid keys: c"]),
        ("sign", ["sign: missing required key 'max'"]),
        ("autoclip", ["autoclip: missing required key 'p'", "valid keys: p, warmup, window"]),
        ("autoclip:p=0", ["autoclip: p must be in (0, 100] (got 0)"]),
        ("autoclip:p=100.5", ["autoclip: p must be in (0, 100]"]),
        ("autoclip:p=10,warmup=2.5", ["autoclip: warmup='2.5' is not a whole number"]),
        ("autoclip:p=10,warmup=-1", ["autoclip: warmup must be in [0, 1000000] (got -1)"]),
        ("autoclip:p=10,window=0", ["autoclip: window must be in [1, 1000000]"]),
        ("zclip:alpha=1", ["zclip: alpha must be in (0, 1) (got 1)"]),
        ("zclip:alpha=0", ["zclip: alpha must be in (0, 1)"]),
        ("zclip:z=-2", ["zclip: z must be > 0"]),
        ("zclip:warmup=0", ["zclip: warmup must be in [1, 1000000]"]),
        ("zclip:mode=mean", ["zclip: mode='mean' is not valid; choose one of reciprocal, threshold"]),
        ("agc:eps=0.1", ["agc: missing required key 'lambda'", "valid keys: lambda, eps"]),
        ("agc:lambda=0", ["agc: lambda must be > 0"]),
        ("agc:lambda=0.01,eps=-1", ["agc: eps must be > 0"]),
        ("skip:window=10", ["skip: missing required key 'sigma'"]),
        ("skip:sigma=3,window=1", ["skip: window must be in [2, 1000000]"]),
        ("skip:sigma=3,window=10,warmup=20", ["skip: warmup must be <= window (10) (got 20)"]),
        ("skip:sigma=3,warmup=1", ["skip: warmup must be in [2, 1000000]"]),
        ("global-norm:max=1+layer-norm:max=1", ["cannot compose 2 clip policies (global-norm and layer-norm)",
                                                "zclip:z=2.5+skip:sigma=6"]),
        ("skip:sigma=1+skip:sigma=2", ["cannot compose 2 skip policies"]),
        ("zclip+skip:sigma=1+autoclip:p=5", ["cannot compose 2 clip policies (zclip and autoclip)"]),
        ("zclip:z=2.5+sikp:sigma=6", ["unknown clip policy 'sikp'", "did you mean 'skip'"]),
    ],
)
def test_bad_specs_give_one_line_naming_the_problem(spec, fragments):
    with pytest.raises(GradprobeError) as info:
        parse_spec(spec)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_non_string_spec_is_rejected():
    with pytest.raises(GradprobeError, match="must be a string"):
        parse_spec(1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: GlobalNorm(max=-1.0), "global-norm: max must be > 0"),
        (lambda: GlobalNorm(max=True), "global-norm: max must be a number"),
        (lambda: AutoClip(p=10, window=0), "autoclip: window must be in [1, 1000000]"),
        (lambda: ZClip(mode="fixed"), "zclip: mode='fixed' is not valid"),
        (lambda: Composite(Skip(sigma=1.0), Skip(sigma=2.0)), "compose one clip policy with one skip policy"),
        (lambda: Composite(LayerNorm(max=1.0), GlobalNorm(max=1.0)), "compose one clip policy"),
    ],
)
def test_constructing_policies_in_python_validates_like_the_parser(make, fragment):
    with pytest.raises(GradprobeError, match=None) as info:
        make()
    assert fragment in str(info.value)


SPEC_ALPHABET = "abcdefgilmnoprstuvwxyz-_:=,+.0123456789eE \t"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), st.text(alphabet=SPEC_ALPHABET, max_size=60)))
def test_parser_on_arbitrary_text_returns_a_policy_or_a_one_line_error(text):
    try:
        policy = parse_spec(text)
    except GradprobeError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert parse_spec(str(policy)) == policy


def _key_values(key):
    if key.kind == "choice":
        return st.sampled_from(key.choices)
    if key.kind == "int":
        return st.integers(int(key.low) if key.low is not None else 0, 10_000)
    low = key.low if key.low is not None else 0.0
    high = key.high if key.high is not None else 1e6
    return st.floats(low, high, exclude_min=key.low_open or key.low is None, exclude_max=key.high_open,
                     allow_nan=False, allow_infinity=False)


@st.composite
def valid_specs(draw, cls=None):
    cls = cls or draw(st.sampled_from([c for c in POLICIES.values() if c is not Skip]))
    parts = []
    for key in cls.KEYS:
        if key.required or draw(st.booleans()):
            parts.append(f"{key.name}={draw(_key_values(key))!s}")
    if cls is Skip:
        window = draw(st.integers(2, 500))
        parts = [p for p in parts if not p.startswith(("window", "warmup"))]
        parts += [f"window={window}", f"warmup={draw(st.integers(2, window))}"]
    return cls.name + (":" + ",".join(parts) if parts else "")


@settings(max_examples=300, deadline=None)
@given(valid_specs(), st.one_of(st.none(), valid_specs(Skip)))
def test_valid_specs_round_trip_through_their_canonical_text(clip, skip):
    text = clip if skip is None else f"{clip}+{skip}"
    policy = parse_spec(text)
    assert parse_spec(str(policy)) == policy
    assert str(parse_spec(str(policy))) == str(policy)


def test_importing_policies_imports_neither_torch_nor_tensorflow():
    code = (
        "import sys, gradprobe.policies as p\n"
        "r = p.parse_spec('zclip:warmup=2+skip:sigma=3,window=4').replay([1.0, 2.0, 3.0, 50.0])\n"
        "print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- replay on recorded global norms ----------------------------------------------------------


def test_global_norm_replay_by_hand():
    replay = parse_spec("global-norm:max=1").replay([0.5, 2.0, 4.0, 1.0])
    np.testing.assert_allclose(replay.scale, [1.0, 1 / (2 + 1e-6), 1 / (4 + 1e-6), 1.0], rtol=1e-6)
    np.testing.assert_allclose(replay.post_norm, [0.5, 1.0, 1.0, 1.0], rtol=1e-5)
    assert replay.clipped.tolist() == [False, True, True, False]
    assert replay.clipped_fraction == 0.5
    assert replay.mean_scale == pytest.approx((1 + 0.5 + 0.25 + 1) / 4, rel=1e-5)
    assert replay.mean_scale_when_clipped == pytest.approx(0.375, rel=1e-5)
    assert replay.exact and replay.threshold.tolist() == [1.0] * 4
    frame = replay.to_frame()
    assert list(frame.index) == [0, 1, 2, 3]
    assert list(frame.columns) == ["norm", "threshold", "scale", "post_norm", "clipped", "skipped",
                                   "skip_threshold", "evaluated"]


def test_autoclip_replay_by_hand_with_warmup_and_bounded_window():
    # window 3, p=50 (median of the last three norms, current included), first 2 steps warm up
    norms = [4.0, 1.0, 2.0, 10.0, 3.0, 8.0]
    replay = parse_spec("autoclip:p=50,warmup=2,window=3").replay(norms)
    expected_threshold = [math.nan, math.nan, 2.0, 2.0, 3.0, 8.0]  # medians of [4,1,2] [1,2,10] [2,10,3] [10,3,8]
    np.testing.assert_allclose(replay.threshold, expected_threshold, equal_nan=True)
    assert replay.clipped.tolist() == [False, False, False, True, False, False]
    assert replay.post_norm[3] == pytest.approx(2.0, rel=1e-5)


def test_autoclip_percentile_interpolates_linearly():
    replay = parse_spec("autoclip:p=10").replay([1.0, 2.0, 3.0, 4.0, 5.0])
    # history of 5 at the last step: position 0.1 * 4 = 0.4 between 1 and 2
    assert replay.threshold[-1] == pytest.approx(1.4, rel=1e-6)
    assert replay.threshold[0] == 1.0 and not replay.clipped[0]


def test_non_finite_norms_never_enter_adaptive_statistics():
    # zclip warmup 2 collects 1 and 3 (inf ignored): mean 2, var 1, so threshold 2 + 2.5 * 1
    zclip = parse_spec("zclip:warmup=2").replay([1.0, math.inf, 3.0, 100.0])
    np.testing.assert_allclose(zclip.threshold, [math.nan, math.nan, math.nan, 4.5], equal_nan=True)
    assert zclip.clipped.tolist() == [False, False, False, True]
    # reciprocal clipping: 2 + 2.5**2 * 1 / (100 - 2)
    assert zclip.post_norm[3] == pytest.approx(2 + 6.25 / 98, rel=1e-5)
    auto = parse_spec("autoclip:p=100").replay([1.0, math.inf, 2.0])
    assert auto.threshold.tolist() == [1.0, 1.0, 2.0]
    assert auto.scale[1] == 0.0


def test_skip_skips_non_finite_norms_even_before_it_is_armed():
    replay = parse_spec("skip:sigma=3,window=4").replay([1.0, math.nan, math.inf, 1.0])
    assert replay.skipped.tolist() == [False, True, True, False]
    assert np.isnan(replay.skip_threshold).all()  # fewer than 4 norms seen: not armed


def test_skipped_steps_do_not_enter_the_skip_window():
    # After four 1.0s: mean 1, std 0. The spike 100 is skipped; had it entered the
    # window (mean 25.75, std 42.4, limit 68), the next spike of 30 would pass.
    norms = [1.0, 1.0, 1.0, 1.0, 100.0, 1.0, 30.0]
    replay = parse_spec("skip:sigma=1,window=4").replay(norms)
    assert replay.skipped.tolist() == [False, False, False, False, True, False, True]
    assert replay.skip_threshold[4] == 1.0
    assert replay.scale.tolist() == [1, 1, 1, 1, 0, 1, 0]
    assert replay.skipped_fraction == pytest.approx(2 / 7)


def test_composed_skip_freezes_the_clip_policy_state():
    # zclip warmup 2 on [1, 3] -> mean 2, var 1; the skipped spike must not move the EMA.
    norms = [1.0, 3.0, 500.0, 2.0]
    composed = parse_spec("zclip:warmup=2,alpha=0.5+skip:sigma=1,window=2")
    replay = composed.replay(norms)
    assert replay.skipped.tolist() == [False, False, True, False]
    assert replay.threshold[3] == pytest.approx(2 + 2.5 * 1.0)  # the statistics of the warmup
    assert replay.scale[2] == 0 and not replay.clipped[2]


def test_global_inf_norm_replay_uses_layer_maxabs_where_recorded():
    policy = parse_spec("global-norm:max=1,norm=inf")
    with pytest.raises(GradprobeError, match="layer_maxabs"):
        policy.replay([1.0, 2.0])
    with pytest.raises(GradprobeError, match="layer_maxabs must have shape"):
        policy.replay([1.0, 2.0], layer_maxabs=np.ones(2))
    maxabs = np.array([[0.5, 2.0], [np.nan, np.nan], [0.2, 0.3]])
    replay = policy.replay([3.0, 3.0, 3.0], layer_maxabs=maxabs)
    assert replay.evaluated.tolist() == [True, False, True]
    assert replay.clipped.tolist() == [True, False, False]
    assert replay.scale[0] == pytest.approx(1 / (2 + 1e-6), rel=1e-6)
    assert np.isnan(replay.scale[1]) and np.isnan(replay.threshold[1])
    assert replay.clipped_fraction == 0.5


# -- replay of per-layer policies from per-layer statistics ------------------------------------

NORMS = np.array([[3.0, 0.5], [np.nan, np.nan], [1.0, 0.1]])  # steps x layers; step 1 not sampled
MAXABS = np.array([[2.0, 0.5], [np.nan, np.nan], [0.4, 0.05]])
PNORMS = np.array([[10.0, 1.0], [np.nan, np.nan], [10.0, 0.0]])
NUMEL = [4, 1]
GLOBAL = np.sqrt(np.nansum(NORMS ** 2, axis=1))


def replay_layers(spec):
    return parse_spec(spec).replay(GLOBAL, layer_norms=NORMS, layer_maxabs=MAXABS, param_norms=PNORMS, numel=NUMEL)


def test_layer_norm_replay_is_exact_and_marks_unsampled_steps():
    replay = replay_layers("layer-norm:max=1")
    assert replay.exact
    assert replay.evaluated.tolist() == [True, False, True]
    # step 0: layer 0 clipped from 3 to 1 (scale 1/(3+1e-6)), layer 1 kept
    assert replay.post_norm[0] == pytest.approx(math.hypot(3 / (3 + 1e-6), 0.5), rel=1e-6)
    assert replay.post_norm[2] == pytest.approx(math.hypot(1.0, 0.1), rel=1e-6)
    assert replay.clipped.tolist() == [True, False, False]
    assert np.isnan(replay.post_norm[1]) and np.isnan(replay.scale[1])
    assert replay.clipped_fraction == 0.5


def test_value_replay_clip_decision_is_exact_and_post_norm_an_upper_bound():
    replay = replay_layers("value:max=0.45")
    assert not replay.exact
    assert replay.clipped.tolist() == [True, False, False]  # step 2: max-abs 0.4 and 0.05 stay under 0.45
    # step 0: min(3, 0.45 * sqrt(4)) and min(0.5, 0.45 * sqrt(1))
    assert replay.post_norm[0] == pytest.approx(math.hypot(0.9, 0.45), rel=1e-6)


def test_scaled_value_replay_uses_the_bound_per_parameter_size():
    replay = replay_layers("scaled-value:c=1")  # bounds 1/sqrt(4) = 0.5 and 1
    assert replay.clipped.tolist() == [True, False, False]
    assert replay.post_norm[0] == pytest.approx(math.hypot(1.0, 0.5), rel=1e-6)


def test_sign_replay_assumes_no_zero_elements():
    replay = replay_layers("sign:max=0.8")
    assert replay.clipped.tolist() == [True, False, True]
    assert replay.post_norm[0] == pytest.approx(math.hypot(0.8 * 2, 0.5), rel=1e-6)
    assert replay.post_norm[2] == pytest.approx(math.hypot(0.8 * 2, 0.1), rel=1e-6)


def test_agc_replay_estimates_with_whole_parameters_as_units():
    replay = replay_layers("agc:lambda=0.2")
    # step 0: bounds 0.2*10 = 2 (3 > 2: clipped to 2) and 0.2*1 = 0.2 (0.5 > 0.2: clipped to 0.2)
    assert replay.post_norm[0] == pytest.approx(math.hypot(2.0, 0.2), rel=1e-5)
    # step 2: bounds 2 and 0.2 * eps(1e-3): layer 1 clipped to 2e-4
    assert replay.post_norm[2] == pytest.approx(math.hypot(1.0, 2e-4), rel=1e-5)
    assert replay.clipped.tolist() == [True, False, True]


def test_layer_replay_reports_missing_inputs():
    with pytest.raises(GradprobeError, match="replay needs layer_maxabs, layer_norms, numel"):
        parse_spec("value:max=1").replay([1.0])
    with pytest.raises(GradprobeError, match="layer_norms must have shape"):
        parse_spec("layer-norm:max=1").replay([1.0, 2.0], layer_norms=np.ones((3, 2)))


def test_layer_policy_with_skip_replays_both():
    global_norms = [1.0, 1.0, 50.0, 1.0]
    norms = np.array([[1.0], [1.0], [50.0], [1.0]])
    replay = parse_spec("layer-norm:max=0.5+skip:sigma=2,window=2").replay(global_norms, layer_norms=norms)
    assert replay.skipped.tolist() == [False, False, True, False]
    assert replay.clipped.tolist() == [True, True, False, True]
    assert replay.scale[2] == 0 and replay.post_norm[2] == 0


def test_layer_norm_replay_matches_live_torch_clipping():
    torch.manual_seed(0)
    grads = [torch.randn(5, 3) * 2, torch.randn(3) * 0.1, torch.randn(2, 2) * 4]
    policy = parse_spec("layer-norm:max=1")
    norms = torch.stack([torch.linalg.vector_norm(g) for g in grads])
    result, _ = apply_torch(policy, init_state(policy, "cpu"), grads)
    replay = policy.replay([float(torch.linalg.vector_norm(norms))], layer_norms=norms.numpy()[None, :])
    actual_post = float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])))
    assert replay.post_norm[0] == pytest.approx(actual_post, rel=1e-6)
    assert result.post_norm.item() == pytest.approx(actual_post, rel=1e-6)


# -- replay of a recorded run ----------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    with gradprobe.watch(model, out=tmp_path_factory.mktemp("runs"), every=2) as rec:
        for i in range(30):
            opt.zero_grad()
            scale = 20.0 if i in (7, 19) else 1.0
            (torch.nn.functional.mse_loss(model(x), y) * scale).backward()
            opt.step()
    return gradprobe.load_run(rec.path)


def test_replay_run_global_policy_covers_every_step(recorded_run):
    norms = recorded_run.steps["global_norm"].to_numpy()
    threshold = float(np.median(norms))
    replay = replay_run(parse_spec(f"global-norm:max={threshold}"), recorded_run)
    assert replay.steps.tolist() == list(range(30))
    assert replay.clipped.tolist() == (norms > np.float32(threshold)).tolist()
    assert replay.clipped_fraction == pytest.approx(np.mean(norms > np.float32(threshold)))


def test_replay_run_layer_policy_uses_sampled_steps(recorded_run):
    replay = replay_run(parse_spec("layer-norm:max=0.05"), recorded_run)
    assert replay.evaluated.tolist() == [step % 2 == 0 for step in range(30)]
    layers = recorded_run.layers
    for step in (0, 8, 20):
        norms = layers[layers["step"] == step]["norm"].to_numpy(dtype=np.float64)
        expected = math.sqrt(sum((0.05 * n / (n + 1e-6) if n > 0.05 else n) ** 2 for n in norms))
        assert replay.post_norm[step] == pytest.approx(expected, rel=1e-5)


def test_replay_run_of_a_missing_optimizer_is_a_clear_error(recorded_run):
    with pytest.raises(GradprobeError, match="no steps recorded for optimizer 3 on rank 0"):
        replay_run(parse_spec("global-norm:max=1"), recorded_run, optimizer=3)


# -- the PyTorch clipper API --------------------------------------------------------------------


def _model_pair():
    torch.manual_seed(1)
    a = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    b = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    b.load_state_dict(a.state_dict())
    x = torch.randn(16, 6) * 10
    for m in (a, b):
        m(x).pow(2).sum().backward()
    return a, b


def test_clipper_on_a_parameter_generator_matches_clip_grad_norm():
    ours, reference = _model_pair()
    norm, scale = clipper("global-norm:max=0.5")(ours.parameters())  # a generator, read once
    total = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    assert isinstance(norm, torch.Tensor) and isinstance(scale, torch.Tensor)
    assert norm.item() == pytest.approx(total.item(), rel=1e-6)
    assert scale.item() == pytest.approx(0.5 / (total.item() + 1e-6), rel=1e-6)
    for p, q in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_clipper_bad_spec_fails_before_training():
    with pytest.raises(GradprobeError, match="unknown clip policy"):
        clipper("globalnorm:max=1")


def test_clipper_without_gradients_is_a_no_op():
    model = torch.nn.Linear(2, 2)
    norm, scale = clipper("zclip")(model.parameters())
    assert norm.item() == 0.0 and scale.item() == 1.0


def test_clipper_keeps_state_across_calls():
    clip = clipper("autoclip:p=50")
    param = torch.nn.Parameter(torch.zeros(2))
    seen = []
    for value in (3.0, 4.0, 1.0, 10.0):  # norms 5, 6.67, 1.67, 16.7 (grad (0.6v, 0.8v))
        param.grad = torch.tensor([0.6, 0.8]) * value * 5 / 3
        norm, scale = clip([param])
        seen.append((norm.item(), scale.item()))
    # at the last call the history is [5, 6.667, 1.667, 16.667]: median (5 + 6.667) / 2
    median = (5.0 + 20 / 3) / 2
    assert seen[-1][1] == pytest.approx(median / (50 / 3 + 1e-6), rel=1e-5)
    assert torch.linalg.vector_norm(param.grad).item() == pytest.approx(median, rel=1e-5)


def test_apply_torch_reuses_the_given_norms():
    grads = [torch.ones(4) * 3.0]  # real norm 6
    given_norms = torch.tensor([2.0])  # deliberately different: the policy must use these, not recompute
    policy = parse_spec("global-norm:max=1")
    result, _ = apply_torch(policy, init_state(policy, "cpu"), grads, layer_norms=given_norms,
                            global_norm=torch.tensor(2.0))
    assert result.norm.item() == 2.0
    assert grads[0][0].item() == pytest.approx(3.0 / (2.0 + 1e-6), rel=1e-6)


def test_half_precision_gradients_are_scaled_in_place():
    g = torch.full((1000,), 300.0, dtype=torch.float16)  # squares overflow fp16
    policy = parse_spec("global-norm:max=1")
    result, _ = apply_torch(policy, init_state(policy, "cpu"), [g])
    assert g.dtype == torch.float16
    assert result.norm.item() == pytest.approx(300.0 * math.sqrt(1000), rel=1e-3)
    assert torch.linalg.vector_norm(g.float()).item() == pytest.approx(1.0, rel=1e-2)


def test_sparse_gradients_scale_globally_and_elementwise_policies_refuse_them():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2, 2])).sum().backward()
    dense_norm = torch.linalg.vector_norm(emb.weight.grad.to_dense()).item()
    norm, scale = clipper("global-norm:max=0.1")(emb.parameters())
    assert norm.item() == pytest.approx(dense_norm, rel=1e-6)
    assert torch.linalg.vector_norm(emb.weight.grad.to_dense()).item() == pytest.approx(0.1, rel=1e-4)
    with pytest.raises(GradprobeError, match="value clipping does not support torch.sparse_coo gradients"):
        clipper("value:max=0.1")(emb.parameters())


def test_agc_needs_the_parameters():
    policy = parse_spec("agc:lambda=0.1")
    with pytest.raises(GradprobeError, match="agc needs the parameters"):
        apply_torch(policy, init_state(policy, "cpu"), [torch.ones(2, 2)])


def _spiky_training(optimizer_factory):
    """Train one parameter with a skip policy; the third gradient is a spike."""
    param = torch.nn.Parameter(torch.ones(3))
    opt = optimizer_factory([param])
    clip = clipper("skip:sigma=2,window=2")
    history = []
    for value in (1.0, 1.1, 100.0, 1.05):
        opt.zero_grad()
        param.grad = torch.full((3,), value)
        clip([param])
        before = param.detach().clone()
        clip.step(opt)
        history.append((clip.last.skipped.item(), torch.equal(before, param.detach())))
    return history, opt


@pytest.mark.parametrize("fused", [True, False])
def test_skipped_steps_leave_parameters_and_momentum_untouched(fused):
    history, opt = _spiky_training(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1,
                                                             fused=fused))
    assert history == [(False, False), (False, False), (True, True), (False, False)]
    assert not hasattr(opt, "found_inf")


def test_fused_skip_also_freezes_adam_moments_and_step_count():
    param = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([param], lr=0.1, fused=True)
    param.grad = torch.ones(2)
    opt.step()
    snapshot = {k: v.clone() for k, v in opt.state[param].items()}
    param.grad = torch.full((2,), 1e6)
    step_unless_skipped(opt, torch.tensor(True))
    for key, value in opt.state[param].items():
        assert torch.equal(value, snapshot[key]), key
    step_unless_skipped(opt, torch.tensor(False))
    assert opt.state[param]["step"].item() == 2
