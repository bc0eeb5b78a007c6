"""Every clip policy, through every applier, against independent reference implementations.

The references below are written from each policy's formula (float64, plain
Python loops, the standard library's statistics and numpy's percentile),
independently of gradprobe's code. Each applier (numpy with PyTorch layout,
numpy with Keras layout, torch, TensorFlow eagerly and inside one
``tf.function``, in Keras layout) gets the same gradient sequence and must
produce the same clipped gradients and the same per-step decisions.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

import numpy as np
import pytest
import torch

from gradprobe.policies import Gradients, NumpyOps, parse_spec
from gradprobe.pytorch.clip import apply_torch, init_state
from conftest import require

EPS = 1e-6

# -- the fixed gradient sequence --------------------------------------------------------
# Parameters in PyTorch layout: a 3x2 weight (3 output units) and a 3-element bias;
# one bias entry is 0 so AGC's eps floor matters.
PARAMS = [np.array([[1.0, -2.0], [0.5, 0.5], [0.02, 0.0]], dtype=np.float32),
          np.array([0.0, 0.1, -1.0], dtype=np.float32)]
STEPS = 40
SPIKES = {12: 30.0, 25: 10.0, 31: 50.0}


def gradient_sequence() -> list[list[np.ndarray]]:
    rng = np.random.default_rng(1234)
    sequence = []
    for t in range(STEPS):
        factor = SPIKES.get(t, 1.0) * (0.6 + 0.02 * t)
        sequence.append([(rng.normal(size=p.shape) * factor).astype(np.float32) for p in PARAMS])
    return sequence


# -- independent references ---------------------------------------------------------------
def l2(arrays) -> float:
    return math.sqrt(sum(float(x) ** 2 for a in arrays for x in np.asarray(a, dtype=np.float64).ravel()))


def maxabs(arrays) -> float:
    return max(abs(float(x)) for a in arrays for x in np.asarray(a).ravel())


class RefGlobalNorm:
    def __init__(self, max_norm, order="2"):
        self.max, self.order = max_norm, order

    def step(self, n, grads):
        n = maxabs(grads) if self.order == "inf" else n
        if n > self.max:
            return self.max / (n + EPS), self.max, True
        return 1.0, self.max, False


class RefNoClip:
    def step(self, n, grads):
        return 1.0, None, False


class RefAutoClip:
    def __init__(self, p, warmup, window):
        self.p, self.warmup, self.history, self.seen = p, warmup, deque(maxlen=window), 0

    def step(self, n, grads):
        self.history.append(n)
        self.seen += 1
        if self.seen <= self.warmup:
            return 1.0, math.nan, False
        threshold = float(np.percentile(list(self.history), self.p))
        if n > threshold:
            return threshold / (n + EPS), threshold, True
        return 1.0, threshold, False


class RefZClip:
    def __init__(self, z, alpha, warmup, mode="reciprocal"):
        self.z, self.alpha, self.warmup, self.mode = z, alpha, warmup, mode
        self.buffer, self.mean, self.var = [], None, None

    def step(self, n, grads):
        if self.mean is None:
            self.buffer.append(n)
            if len(self.buffer) == self.warmup:
                self.mean, self.var = statistics.fmean(self.buffer), statistics.pvariance(self.buffer)
            return 1.0, math.nan, False
        std = math.sqrt(self.var)
        threshold = self.mean + self.z * std
        if n > threshold:
            z_score = (n - self.mean) / std
            target = self.mean + (self.z ** 2 / z_score) * std if self.mode == "reciprocal" else threshold
            scale, effective, clipped = target / (n + EPS), target, True
        else:
            scale, effective, clipped = 1.0, n, False
        self.mean = self.alpha * self.mean + (1 - self.alpha) * effective
        self.var = self.alpha * self.var + (1 - self.alpha) * (effective - self.mean) ** 2
        return scale, threshold, clipped


class RefSkip:
    def __init__(self, sigma, window, warmup=None):
        self.sigma, self.warmup, self.window = sigma, warmup or window, deque(maxlen=window)

    def skipped(self, n) -> bool:
        armed = len(self.window) >= self.warmup
        limit = statistics.fmean(self.window) + self.sigma * statistics.pstdev(self.window) if armed else None
        skip = not math.isfinite(n) or (armed and n > limit)
        if not skip:
            self.window.append(n)
        return skip


def ref_layer_norm(max_norm):
    def clip(grads, params):
        out = []
        for g in grads:
            n = l2([g])
            out.append(g * (max_norm / (n + EPS)) if n > max_norm else g.copy())
        return out
    return clip


def ref_value(bound_of):
    def clip(grads, params):
        return [np.clip(g, -bound_of(g.size), bound_of(g.size)) for g in grads]
    return clip


def ref_sign(lam):
    def clip(grads, params):
        return [lam * np.sign(g) if l2([g]) > lam else g.copy() for g in grads]
    return clip


def ref_agc(lam, eps):
    """Unit = output unit = row of a PyTorch weight; each bias element is its own unit."""
    def clip(grads, params):
        out = []
        for g, w in zip(grads, params):
            g = np.asarray(g, dtype=np.float64).copy()
            units = g.reshape(g.shape[0], -1) if g.ndim > 1 else g.reshape(-1, 1)
            weights = np.asarray(w, dtype=np.float64).reshape(units.shape)
            for u in range(units.shape[0]):
                bound = lam * max(l2([weights[u]]), eps)
                norm = l2([units[u]])
                if norm > bound:
                    units[u] *= bound / max(norm, 1e-6)
            out.append(units.reshape(g.shape))
        return out
    return clip


def expect_global(ref, skip=None):
    """Expected (grads, clipped, skipped, threshold) per step for a global-norm policy (+ skip)."""
    expected = []
    for grads in gradient_sequence():
        n = l2(grads)
        skipped = skip.skipped(n) if skip else False
        scale, threshold, clipped = (0.0, None, False) if skipped else ref.step(n, grads)
        expected.append(([g * scale for g in grads], clipped, skipped, threshold))
    return expected


def expect_layer(clip, skip=None):
    expected = []
    for grads in gradient_sequence():
        skipped = skip.skipped(l2(grads)) if skip else False
        clipped_grads = clip([g.copy() for g in grads], PARAMS)
        changed = any(not np.allclose(a, b, rtol=0, atol=0) for a, b in zip(clipped_grads, grads))
        out = [g * 0.0 for g in clipped_grads] if skipped else clipped_grads
        expected.append((out, changed and not skipped, skipped, None))
    return expected


CASES = {
    "global-norm:max=3": lambda: expect_global(RefGlobalNorm(3.0)),
    "global-norm:max=1.5,norm=inf": lambda: expect_global(RefGlobalNorm(1.5, "inf")),
    "autoclip:p=30,warmup=3,window=10": lambda: expect_global(RefAutoClip(30, 3, 10)),
    "autoclip:p=10": lambda: expect_global(RefAutoClip(10, 0, 1000)),
    "zclip:z=2.5,alpha=0.9,warmup=5": lambda: expect_global(RefZClip(2.5, 0.9, 5)),
    "zclip:z=1.5,alpha=0.8,warmup=4,mode=threshold": lambda: expect_global(RefZClip(1.5, 0.8, 4, "threshold")),
    "skip:sigma=3,window=8,warmup=6": lambda: expect_global(RefNoClip(), RefSkip(3, 8, 6)),
    "zclip:z=2,alpha=0.9,warmup=5+skip:sigma=3,window=8": lambda: expect_global(RefZClip(2, 0.9, 5), RefSkip(3, 8)),
    "global-norm:max=3+skip:sigma=3,window=6,warmup=4": lambda: expect_global(RefGlobalNorm(3.0), RefSkip(3, 6, 4)),
    "layer-norm:max=2": lambda: expect_layer(ref_layer_norm(2.0)),
    "value:max=1": lambda: expect_layer(ref_value(lambda n: 1.0)),
    "scaled-value:c=1.5": lambda: expect_layer(ref_value(lambda n: 1.5 / math.sqrt(n))),
    "sign:max=2.5": lambda: expect_layer(ref_sign(2.5)),
    "agc:lambda=0.5": lambda: expect_layer(ref_agc(0.5, 1e-3)),
    "agc:lambda=0.2,eps=0.5": lambda: expect_layer(ref_agc(0.2, 0.5)),
    "layer-norm:max=2+skip:sigma=3,window=8,warmup=6": lambda: expect_layer(ref_layer_norm(2.0), RefSkip(3, 8, 6)),
}


# -- appliers: one per framework layout ---------------------------------------------------
def run_numpy(spec, sequence, keras_layout=False):
    """The numpy backend; with ``keras_layout`` weights are stored (in, out) and units are the last axis."""
    policy = parse_spec(spec)
    ops = NumpyOps(unit_axis=-1 if keras_layout else 0)
    flip = (lambda a: np.ascontiguousarray(a.T)) if keras_layout else (lambda a: a.copy())
    params = [flip(p) for p in PARAMS]
    state = policy.init_state(ops)
    outcomes = []
    for grads in sequence:
        grads = [flip(g) for g in grads]
        norms = ops.norms(grads, 2.0)
        result, grads, state = policy.apply(ops, state, Gradients(grads, norms, ops.global_norm(norms), params))
        outcomes.append(([flip(g) for g in grads], bool(result.clipped), bool(result.skipped),
                         float(result.threshold)))
    return outcomes


def run_torch(spec, sequence):
    policy = parse_spec(spec)
    state = init_state(policy, "cpu")
    params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in PARAMS]
    outcomes = []
    for grads in sequence:
        for p, g in zip(params, grads):
            p.grad = torch.from_numpy(g.copy())
        result, state = apply_torch(policy, state, [p.grad for p in params], params=params)
        outcomes.append(([p.grad.numpy().copy() for p in params], bool(result.clipped), bool(result.skipped),
                         result.threshold.item()))
    return outcomes


def run_tensorflow(spec, sequence, compiled=False):
    """TensorFlow in Keras layout (kernels stored (in, out)); ``compiled``: every step runs in one
    ``tf.function``, traced once, the policy's state living in variables across calls."""
    tf = require("tensorflow")
    from gradprobe.tensorflow.clip import TFClipper

    clipper = TFClipper(spec)
    variables = [tf.Variable(np.ascontiguousarray(p.T)) for p in PARAMS]

    def step(*grads):
        clipped, result = clipper.clip(list(grads), variables)
        return clipped, result.clipped, result.skipped, result.threshold

    if compiled:
        step = tf.function(step)
    outcomes = []
    for grads in sequence:
        clipped, was_clipped, skipped, threshold = step(*(tf.constant(np.ascontiguousarray(g.T)) for g in grads))
        outcomes.append(([g.numpy().T for g in clipped], bool(was_clipped), bool(skipped), float(threshold)))
    if compiled:
        assert step.experimental_get_tracing_count() == 1
    return outcomes


APPLIERS = {
    "numpy": run_numpy,
    "numpy-keras-layout": lambda spec, seq: run_numpy(spec, seq, keras_layout=True),
    "torch": run_torch,
    "tensorflow": run_tensorflow,
    "tf.function": lambda spec, seq: run_tensorflow(spec, seq, compiled=True),
}
TF_APPLIERS = {"tensorflow", "tf.function"}


@pytest.mark.parametrize("applier", [pytest.param(name, marks=pytest.mark.tensorflow) if name in TF_APPLIERS
                                     else name for name in APPLIERS])
@pytest.mark.parametrize("spec", list(CASES))
def test_policy_matches_reference(spec, applier):
    expected = CASES[spec]()
    actual = APPLIERS[applier](spec, gradient_sequence())
    assert len(actual) == len(expected) == STEPS
    for t, ((want, want_clipped, want_skipped, want_threshold), (got, clipped, skipped, threshold)) in enumerate(
        zip(expected, actual)
    ):
        for w, g in zip(want, got):
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6, err_msg=f"{spec} step {t}")
        assert (clipped, skipped) == (want_clipped, want_skipped), f"{spec} step {t}"
        if want_threshold is not None and not want_skipped:
            np.testing.assert_allclose(threshold, want_threshold, rtol=1e-5, equal_nan=True, err_msg=f"step {t}")
    assert any(c or s for _, c, s, _ in expected), f"{spec}: the sequence never clips; the case tests nothing"


@pytest.mark.parametrize("spec", [spec for spec in CASES if "skip" in spec])
def test_reference_sequence_skips_the_spikes_only(spec):
    """The fixed sequence makes every skip case skip the spikes and nothing else (so the
    composed clip policy still has steps to clip)."""
    expected = CASES[spec]()
    assert [t for t, (_, _, skipped, _) in enumerate(expected) if skipped] == sorted(SPIKES)
    assert "+" not in spec or any(clipped for _, clipped, _, _ in expected)


def test_reference_global_norm_by_hand():
    """Anchor the reference itself with numbers worked out by hand: |(3, 4)| = 5, max 1 -> (0.6, 0.8)."""
    scale, _, clipped = RefGlobalNorm(1.0).step(5.0, [np.array([3.0, 4.0])])
    assert clipped and scale == pytest.approx(1.0 / (5.0 + 1e-6))
    # zclip warmup [1, 2, 3]: mean 2, population variance 2/3; norm 10 -> z = 8/sqrt(2/3)
    ref = RefZClip(z=2.0, alpha=0.5, warmup=3)
    for n in (1.0, 2.0, 3.0):
        ref.step(n, None)
    scale, threshold, _ = ref.step(10.0, None)
    std = math.sqrt(2 / 3)
    assert threshold == pytest.approx(2 + 2 * std)
    assert scale * 10.0 == pytest.approx(2 + 4 / (8 / std) * std, rel=1e-6)


# -- live torch and TensorFlow vs numpy replay, step by step ---------------------------------------------------
GLOBAL_SPECS = [
    "global-norm:max=3",
    "autoclip:p=30,warmup=3,window=10",
    "zclip:z=2.5,alpha=0.9,warmup=5",
    "zclip:z=1.5,alpha=0.8,warmup=4,mode=threshold",
    "skip:sigma=2,window=8,warmup=6",
    "zclip:z=2,alpha=0.9,warmup=5+skip:sigma=3,window=8",
    "autoclip:p=50,window=6+skip:sigma=2,window=6,warmup=4",
]


def live_torch(spec, sequence):
    """Per step: norm, threshold, scale, post-norm, clipped, skipped, skip threshold."""
    policy = parse_spec(spec)
    state = init_state(policy, "cpu")
    rows = []
    for grads in sequence:
        r, state = apply_torch(policy, state, [torch.from_numpy(g.copy()) for g in grads])
        rows.append([v.item() for v in (r.norm, r.threshold, r.scale, r.post_norm, r.clipped, r.skipped,
                                        r.skip_threshold)])
    return rows


def live_tensorflow(spec, sequence):
    tf = require("tensorflow")
    from gradprobe.tensorflow.clip import TFClipper

    clipper = TFClipper(spec)
    step = tf.function(lambda grads: clipper.clip(grads)[1])
    rows = []
    for grads in sequence:
        r = step([tf.constant(g) for g in grads])
        rows.append([float(v) for v in (r.norm, r.threshold, r.scale, r.post_norm, r.clipped, r.skipped,
                                        r.skip_threshold)])
    return rows


@pytest.mark.parametrize("live_run", [live_torch, pytest.param(live_tensorflow, marks=pytest.mark.tensorflow)],
                         ids=["torch", "tensorflow"])
@pytest.mark.parametrize("spec", GLOBAL_SPECS)
def test_replay_equals_live(spec, live_run):
    policy = parse_spec(spec)
    sequence = gradient_sequence()
    sequence[20] = [np.full_like(g, np.inf) for g in sequence[20]]  # a non-finite step
    live = np.asarray(live_run(spec, sequence), dtype=np.float64)
    replay = policy.replay(live[:, 0])
    assert np.array_equal(replay.clipped, live[:, 4] > 0)
    assert np.array_equal(replay.skipped, live[:, 5] > 0)
    for column, values in ((1, replay.threshold), (2, replay.scale), (3, replay.post_norm), (6, replay.skip_threshold)):
        np.testing.assert_allclose(values, live[:, column], rtol=1e-6, atol=0, equal_nan=True)
    assert replay.exact and replay.evaluated.all()
    assert replay.clipped.any() or replay.skipped.any()


# -- no host synchronisation in the torch path -----------------------------------------------
ALL_SPECS = list(CASES) + ["zclip", "skip:sigma=6"]


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_torch_path_never_reads_device_values(spec):
    """On the meta device a tensor has no value: any host read (.item(), bool(), float(),
    indexing by a tensor) raises, so completing a few steps proves the path is sync-free."""
    policy = parse_spec(spec)
    state = init_state(policy, "meta")
    params = [torch.nn.Parameter(torch.empty(p.shape, device="meta")) for p in PARAMS]
    for _ in range(3):
        grads = [torch.empty(p.shape, device="meta") for p in PARAMS]
        result, state = apply_torch(policy, state, grads, params=params)
    assert all(isinstance(v, torch.Tensor) and v.device.type == "meta" for v in result)
    assert all(v.device.type == "meta" for v in _tensors(state))


def _tensors(state):
    for value in state.values():
        yield from (_tensors(value) if isinstance(value, dict) else [value])


@pytest.mark.parametrize("spec", ["zclip:warmup=2+skip:sigma=3,window=4", "agc:lambda=0.1", "value:max=0.5"])
def test_torch_results_are_float32_tensors_on_the_gradient_device(spec):
    policy = parse_spec(spec)
    state = init_state(policy, "cpu")
    params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in PARAMS]
    grads = [torch.from_numpy(g) for g in gradient_sequence()[0]]
    result, _ = apply_torch(policy, state, grads, params=params)
    for name, value in result._asdict().items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0, name
        assert value.dtype == (torch.bool if name in ("clipped", "skipped") else torch.float32), name
