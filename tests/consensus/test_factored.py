"""The factored (LoRA) consensus path against float64 SVDs of the explicitly stacked matrices.

Inputs are float32 factors with decaying spectra (σ_j ∝ j^-1.5 per specialist, half of the directions
shared), the case where a float32 Gram would lose the weak directions. Tolerances: singular values 1e-5
relative down to σ_k, subspace sin θ 1e-4, U_cᵀSV_c and ‖S‖_F 1e-5 relative, merged Δ 1e-5 relative.
"""

from __future__ import annotations

import pytest
import torch

from ssam_cli.deltas import LowRankDelta
from ssam_cli.consensus.bases import consensus_bases, project_sum, stacked_spectra as spectra
from ssam_cli.consensus.factored import FactoredSpectrum
from ssam_cli.spectra import Spectrum

K = 12


def lora(g: torch.Generator, d_out: int, d_in: int, r: int, shared: tuple[torch.Tensor, torch.Tensor],
         scale: float = 2.0) -> LowRankDelta:
    """A LoRA update scale·B@A with σ_j ∝ j^-1.5 whose first r/2 directions lie in a shared subspace."""
    half = r // 2
    U = torch.linalg.qr(torch.cat([shared[0][:, :half], torch.randn(d_out, r - half, generator=g, dtype=torch.float64)], 1))[0]
    V = torch.linalg.qr(torch.cat([shared[1][:, :half], torch.randn(d_in, r - half, generator=g, dtype=torch.float64)], 1))[0]
    sigma = torch.arange(1, r + 1, dtype=torch.float64).pow(-1.5)
    mix = torch.linalg.qr(torch.randn(r, r, generator=g, dtype=torch.float64))[0]
    B = (U * sigma.sqrt()) @ mix / scale
    A = mix.T @ (sigma.sqrt()[:, None] * V.T)
    return LowRankDelta(B.float(), A.float(), scale)


def specialists(n: int = 4, d_out: int = 90, d_in: int = 130, r: int = 10, seed: int = 0) -> list[LowRankDelta]:
    g = torch.Generator().manual_seed(seed)
    shared = (torch.randn(d_out, r, generator=g, dtype=torch.float64), torch.randn(d_in, r, generator=g, dtype=torch.float64))
    return [lora(g, d_out, d_in, r, shared) for _ in range(n)]


def exact(deltas: list[LowRankDelta]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dense = [d.B.double() @ d.A.double() * d.scale for d in deltas]
    U, S, _ = torch.linalg.svd(torch.cat(dense, dim=1), full_matrices=False)
    _, T, Vh = torch.linalg.svd(torch.cat(dense, dim=0), full_matrices=False)
    return U, S, Vh.T, T


def sin_theta(A: torch.Tensor, B: torch.Tensor) -> float:
    A, B = A.double(), B.double()
    return float(torch.linalg.matrix_norm(B - A @ (A.T @ B), ord=2))


def test_decaying_spectra_match_float64_svd_on_both_sides():
    deltas = specialists()
    left, right = spectra(deltas)
    U, S, V, T = exact(deltas)
    assert isinstance(left, FactoredSpectrum) and isinstance(right, FactoredSpectrum)
    assert torch.allclose(left.values[:K], S[:K], rtol=1e-5)
    assert torch.allclose(right.values[:K], T[:K], rtol=1e-5)
    assert sin_theta(left.top(K), U[:, :K]) < 1e-4
    assert sin_theta(right.top(K), V[:, :K]) < 1e-4
    Uf = left.vectors.double()
    assert torch.allclose(Uf.T @ Uf, torch.eye(Uf.shape[1], dtype=torch.float64), atol=1e-5)
    assert torch.equal(left.vectors[:, :K], left.top(K))


def test_projected_sum_and_sum_norm_equal_the_direct_products():
    deltas = specialists(seed=1)
    bases = consensus_bases(deltas, K)
    assert bases.factored
    S = sum(d.B.double() @ d.A.double() * d.scale for d in deltas)
    direct = bases.U.double().T @ S @ bases.V.double()
    assert torch.allclose(bases.projected_sum().double(), direct, rtol=1e-5, atol=1e-6 * float(direct.abs().max()))
    assert torch.allclose(project_sum(deltas, bases.U, bases.V).double(), direct, rtol=1e-4,
                          atol=1e-5 * float(direct.abs().max()))
    assert bases.sum_norm() == pytest.approx(float(S.norm()), rel=1e-6)


def test_merged_delta_matches_float64_algorithm_1():
    """Δ = (1/n) Σ U_cU_cᵀ Δ_i V_cV_cᵀ, U_c and V_c the top-k eigenvectors of Σ Δ_iΔ_iᵀ and Σ Δ_iᵀΔ_i (float64)."""
    deltas = specialists(seed=2)
    bases = consensus_bases(deltas, K)
    merged = bases.U.double() @ bases.projected_sum().double() @ bases.V.double().T / len(deltas)
    D = [d.B.double() @ d.A.double() * d.scale for d in deltas]
    Ue = torch.linalg.eigh(sum(d @ d.T for d in D)).eigenvectors.flip(1)[:, :K]
    Ve = torch.linalg.eigh(sum(d.T @ d for d in D)).eigenvectors.flip(1)[:, :K]
    reference = sum(Ue @ Ue.T @ d @ Ve @ Ve.T for d in D) / len(D)
    assert float((merged - reference).norm() / reference.norm()) < 1e-5


def test_rank_deficient_unequal_and_empty_inputs():
    """A duplicated specialist (singular Gram blocks), unequal ranks and a rank-0 specialist stay exact."""
    g = torch.Generator().manual_seed(3)
    a = LowRankDelta(torch.randn(40, 6, generator=g), torch.randn(6, 50, generator=g), 1.5)
    b = LowRankDelta(torch.randn(40, 3, generator=g), torch.randn(3, 50, generator=g), 0.5)
    deltas = [a, a, b, LowRankDelta.zero((40, 50))]
    left, right = spectra(deltas)
    _, S, _, T = exact([a, a, b])
    assert left.numerical_rank == 9 and right.numerical_rank == 9
    assert torch.allclose(left.values[:9], S[:9], rtol=1e-5)
    assert torch.allclose(right.values[:9], T[:9], rtol=1e-5)
    assert left.matrix_shape == (40, 4 * 50)


def test_all_zero_updates_give_an_empty_spectrum():
    left, right = spectra([LowRankDelta.zero((5, 7)), LowRankDelta.zero((5, 7))])
    assert left.numerical_rank == 0 and right.vectors.shape == (7, 0)


def test_steep_but_full_rank_factors_keep_k():
    """σ_R/σ_1 ≈ 2.5e-4 on a 300 × 4000 weight: full rank for the R × R problem (cut at σ_1·R·ε ≈ 8e-6·σ_1),
    though the d-sized tolerance (σ_1·max(m, n·d_in)·ε ≈ 2e-3·σ_1) cut the left side to 48 of 64 directions."""
    g = torch.Generator().manual_seed(5)
    r, n, shape = 16, 4, (300, 4000)
    decay = torch.logspace(0, -3.5, r, dtype=torch.float64)
    deltas = []
    for _ in range(n):
        U = torch.linalg.qr(torch.randn(shape[0], r, generator=g, dtype=torch.float64))[0]
        V = torch.linalg.qr(torch.randn(shape[1], r, generator=g, dtype=torch.float64))[0]
        deltas.append(LowRankDelta((U * decay.sqrt()).float(), (decay.sqrt()[:, None] * V.T).float(), 1.0))
    bases = consensus_bases(deltas, n * r)
    assert bases.U.shape[1] == bases.V.shape[1] == n * r and not bases.capped
    assert Spectrum.numerical_rank.fget(bases.left) < n * r  # the d-sized rule this replaces
    _, S, _, _ = exact(deltas)
    assert float(S[n * r - 1] / S[0]) < 1e-3  # steep: the last direction is weak, yet real
    merged = bases.U.double() @ bases.projected_sum().double() @ bases.V.double().T
    total = sum(d.B.double() @ d.A.double() for d in deltas)
    assert float((merged - total).norm() / total.norm()) < 1e-5  # k = R keeps the whole sum
