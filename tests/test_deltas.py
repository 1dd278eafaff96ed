"""deltas.py's dense arithmetic against float64: the norm's float32 cascade and the weighted sum's rounding."""

from __future__ import annotations

import pytest
import torch

from ssam_cli.deltas import DenseDelta, LowRankDelta, dense_norm, frobenius_norm, weighted_sum


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_dense_norm_matches_float64_on_a_large_offset_tensor(dtype):
    """2^22 entries with a mean offset (the case a float32 running sum gets wrong): 1e-7 relative to float64,
    exact for float64 inputs up to float64's own rounding."""
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(1 << 22, generator=g) * 0.01 + 0.003).to(dtype)
    exact = float(torch.linalg.vector_norm(x.double()))
    assert abs(dense_norm(x) / exact - 1) < (1e-12 if dtype == torch.float64 else 1e-7)


def test_dense_norm_survives_squares_beyond_float32():
    x = torch.full((10,), 1e20, dtype=torch.float32)  # x² = 1e40 overflows float32
    assert dense_norm(x) == pytest.approx(1e20 * 10 ** 0.5, rel=1e-7)


def test_frobenius_norm_of_a_lowrank_delta_equals_its_dense_norm():
    g = torch.Generator().manual_seed(2)
    d = LowRankDelta(torch.randn(9, 3, generator=g), torch.randn(3, 7, generator=g), 0.5)
    assert frobenius_norm(d) == pytest.approx(float(torch.linalg.vector_norm(d.dense().double())), rel=1e-6)


def test_dense_weighted_sum_rounds_each_term_first_and_leaves_its_inputs_alone():
    """Σ w_i Δ_i with every w_i·Δ_i rounded to float32 before it is added (the order and rounding of the sum as
    written, so outputs stay bit-identical to a term-by-term sum), against float64 to 1e-6, inputs untouched."""
    g = torch.Generator().manual_seed(3)
    deltas = [DenseDelta(torch.randn(33, 17, generator=g)) for _ in range(4)]
    copies = [d.tensor.clone() for d in deltas]
    weights = [0.3, 1.0, -0.7, 2.5]
    got = weighted_sum(deltas, weights).tensor
    by_terms = deltas[0].tensor * weights[0]
    for d, w in zip(deltas[1:], weights[1:]):
        by_terms = by_terms + d.tensor * w
    assert torch.equal(got, by_terms)
    exact = sum(d.tensor.double() * w for d, w in zip(deltas, weights))
    assert float((got.double() - exact).norm() / exact.norm()) < 1e-6
    assert all(torch.equal(d.tensor, c) for d, c in zip(deltas, copies))
    assert got.data_ptr() not in {d.tensor.data_ptr() for d in deltas}
