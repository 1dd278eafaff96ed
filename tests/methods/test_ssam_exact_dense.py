"""SSAM's exact dense path (full fine-tunes below the randomized threshold, or `exact: true`) against the direct
float64 Algorithm 1 at n = 1, 2, 3 on tall, wide and square weights.

The exact spectrum of M = [Δ_1 | … | Δ_n] (d_out × n·d_in) takes the short-side Gram when M is wide and a thin QR
when it is tall. M is tall on the left for d_out > n·d_in, and Nᵀ = [Δ_1ᵀ | … | Δ_nᵀ] on the right for
d_in > n·d_out: the shapes below reach both branches on both sides (benchmarks/mutation.py breaks each branch in
turn to prove these tests run it). Tolerance: 1e-5 relative Frobenius error (float32 inputs and compute; the
reference runs in float64 on the same float32 values).
"""

from __future__ import annotations

import pytest
import torch

from ssam_cli.deltas import DenseDelta
from ssam_cli.methods import ssam
from ssam_cli.methods.base import MergeContext
from tests.reference import rel_err, ssam_reference

TOL = 1e-5
SHAPES = {
    "tall": (60, 12),  # left side tall for every n ≤ 4
    "wide": (12, 60),  # right side tall for every n ≤ 4
    "square": (24, 24),  # both sides: the Gram for n ≥ 2, m = p at n = 1
    "nearly-square": (30, 24),  # left tall at n = 1 only
}


def merge(deltas: list[torch.Tensor], k: int, weights: list[float], exact: bool = True, lam: float | None = None):
    params = ssam.SsamParams.model_validate({"rank": k, "exact": exact, **({"lambda": lam} if lam is not None else {})})
    n = len(deltas)
    return ssam.merge([DenseDelta(d) for d in deltas], weights, params, MergeContext("w", n, torch.device("cpu")))


def dense_updates(shape: tuple[int, int], n: int, seed: int, decay: float = 0.85) -> list[torch.Tensor]:
    """Full-rank updates with a decaying spectrum (distinct singular values, so the top-k subspace is well defined)."""
    g = torch.Generator().manual_seed(seed)
    r = min(shape)
    out = []
    for _ in range(n):
        U, _ = torch.linalg.qr(torch.randn(shape[0], r, generator=g, dtype=torch.float64))
        V, _ = torch.linalg.qr(torch.randn(shape[1], r, generator=g, dtype=torch.float64))
        s = decay ** torch.arange(r, dtype=torch.float64) * (1 + torch.rand(r, generator=g, dtype=torch.float64) / 10)
        out.append(((U * s) @ V.T).float())
    return out


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_exact_dense_path_matches_algorithm_1(kind, n):
    shape = SHAPES[kind]
    deltas = dense_updates(shape, n, seed=10 * n + len(kind))
    k = 5
    got = merge(deltas, k, [1.0] * n)
    assert got.stats["bases"] == "exact" and got.stats["rank_used"] == k
    assert rel_err(got.delta.dense(), ssam_reference(deltas, k, 1 / n)) < TOL


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("kind", ["tall", "wide"])
def test_exact_dense_path_with_recipe_weights_is_algorithm_1_on_the_weighted_updates(kind, n):
    shape = SHAPES[kind]
    deltas = dense_updates(shape, n, seed=7 + n)
    weights = [1.0, 0.5, 2.0][:n]
    got = merge(deltas, 4, weights, lam=0.7)
    ref = ssam_reference([d * w for d, w in zip(deltas, weights)], 4, 0.7)
    assert rel_err(got.delta.dense(), ref) < TOL


@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_small_weights_take_the_exact_path_without_asking(kind):
    """`exact: false` (the default) below the randomized threshold is the same exact route, the same result."""
    deltas = dense_updates(SHAPES[kind], 2, seed=3)
    default, forced = merge(deltas, 6, [1.0, 1.0], exact=False), merge(deltas, 6, [1.0, 1.0], exact=True)
    assert default.stats["bases"] == "exact"
    assert torch.equal(default.delta.dense(), forced.delta.dense())
    assert rel_err(default.delta.dense(), ssam_reference(deltas, 6, 0.5)) < TOL


@pytest.mark.parametrize("kind", ["tall", "wide"])
def test_energy_at_k_on_a_tall_side_is_the_share_of_the_squared_singular_values(kind):
    deltas = dense_updates(SHAPES[kind], 1, seed=4)
    got = merge(deltas, 3, [1.0])
    s = torch.linalg.svdvals(deltas[0].double()).square()
    expected = float(s[:3].sum() / s.sum())  # n = 1: M and Nᵀ have the singular values of Δ itself
    assert got.stats["energy_left"] == pytest.approx(expected, abs=1e-6)
    assert got.stats["energy_right"] == pytest.approx(expected, abs=1e-6)
    assert got.stats["numerical_rank"] == [12, 12]
