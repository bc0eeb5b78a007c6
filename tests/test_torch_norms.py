"""Per-tensor max-abs norms and non-finite counts against torch.linalg.vector_norm and torch.isfinite."""

from __future__ import annotations

import math

import pytest
import torch

from gradprobe.pytorch.norms import foreach_norms, nonfinite_counts

CPU = torch.device("cpu")


def tensors() -> list[torch.Tensor]:
    torch.manual_seed(0)
    out = [
        torch.randn(7, 3),
        -torch.rand(5) - 10.0,  # the largest magnitude is a negative value
        torch.randn(4, dtype=torch.float64),
        torch.randn(6).to(torch.float16) * 1000,
        torch.randn(3).to(torch.bfloat16),
        torch.randn(2, 2, dtype=torch.complex64),
        torch.zeros(0),
        torch.randn(8),
        torch.randn(8),
    ]
    out[7][2] = math.nan
    out[8][[1, 4]] = torch.tensor([math.inf, -math.inf])
    return out


def test_max_abs_matches_vector_norm():
    got = foreach_norms(tensors(), math.inf, CPU)
    want = [torch.linalg.vector_norm(t.to(torch.complex128 if t.is_complex() else torch.float64), math.inf)
            if t.numel() else torch.tensor(0.0) for t in tensors()]
    assert got.dtype == torch.float32
    for g, w in zip(got.tolist(), want):
        if math.isnan(w):
            assert math.isnan(g)
        else:
            assert g == pytest.approx(float(w), rel=1e-6)


def test_nonfinite_counts_match_isfinite():
    ts = tensors()
    got = nonfinite_counts(ts, foreach_norms(ts, math.inf, CPU), CPU)
    want = [int(t.numel() - torch.isfinite(t).sum()) for t in ts]
    assert got.tolist() == want
    assert sum(want) == 3  # the test holds non-finite elements to find
