"""The randomized consensus spectra against float64 SVDs of the explicitly stacked matrices.

Tolerances (k = 24, Krylov depth 2: three blocks of k + 8 = 32 columns, q = 96; float32 inputs):
  decaying spectra (σ_j ∝ j^-1.5): top-k singular values within 1e-3 relative, energy at k within 1e-5,
  sin θ to the exact subspace ≤ 0.05 and never above the reported estimate, SSAM's merged Δ within 1e-3;
  flat-ish spectra (σ_j ∝ j^-0.5, no gap): energy at k within 5e-3, the estimate does not claim false accuracy;
  exactly low-rank inputs (rank < one block): the subspace exactly (1e-5), the numerical rank exactly.
"""

from __future__ import annotations

import pytest
import torch

from ssam_cli.consensus.exact import left_singular_of_blocks
from ssam_cli.consensus.randomized import RandomizedSpectrum, randomized_left, krylov_width, randomized_spectra

K = 24


def updates(n: int, d_out: int, d_in: int, decay: float, rank: int | None = None, seed: int = 0) -> list[torch.Tensor]:
    """n float32 updates Δ_i = U_i diag(σ) V_iᵀ with σ_j ∝ j^-decay; U_i share half their directions."""
    g = torch.Generator().manual_seed(seed)
    r = rank or min(d_out, d_in)
    shared_u = torch.randn(d_out, r // 2, generator=g, dtype=torch.float64)
    shared_v = torch.randn(d_in, r // 2, generator=g, dtype=torch.float64)
    sigma = torch.arange(1, r + 1, dtype=torch.float64).pow(-decay)
    out = []
    for _ in range(n):
        U = torch.linalg.qr(torch.cat([shared_u, torch.randn(d_out, r - r // 2, generator=g, dtype=torch.float64)], 1))[0]
        V = torch.linalg.qr(torch.cat([shared_v, torch.randn(d_in, r - r // 2, generator=g, dtype=torch.float64)], 1))[0]
        out.append(((U * sigma) @ V.T).float())
    return out


def exact_left(blocks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    U, S, _ = torch.linalg.svd(torch.cat([b.double() for b in blocks], dim=1), full_matrices=False)
    return U, S


def sin_theta(A: torch.Tensor, B: torch.Tensor) -> float:
    """Sine of the largest principal angle between the spans of A and B (orthonormal columns): ‖(I − AAᵀ)B‖₂,
    which unlike √(1 − cos²) keeps its precision for tiny angles."""
    A, B = A.double(), B.double()
    return float(torch.linalg.matrix_norm(B - A @ (A.T @ B), ord=2))


def exact_energy(S: torch.Tensor, k: int) -> float:
    return float(S[:k].square().sum() / S.square().sum())


def seeded(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("transpose", [False, True], ids=["left: M=[Δ_i]", "right: Nᵀ=[Δ_iᵀ]"])
def test_decaying_spectra_match_float64(transpose):
    deltas = updates(4, 200, 300, decay=1.5)
    blocks = [d.T for d in deltas] if transpose else deltas
    got = randomized_left(blocks, K, seeded())
    U, S = exact_left(blocks)
    assert isinstance(got, RandomizedSpectrum) and got.width == 3 * (K + 8) and got.depth == 2
    assert torch.allclose(got.values[:K], S[:K], rtol=1e-3)
    assert got.energy(K) == pytest.approx(exact_energy(S, K), abs=1e-5)
    true_error = sin_theta(got.vectors[:, :K], U[:, :K])
    assert true_error <= 0.05
    assert true_error <= got.subspace_error < 1.0
    V = got.vectors.double()
    assert torch.allclose(V.T @ V, torch.eye(V.shape[1], dtype=torch.float64), atol=1e-5)


def test_flat_spectrum_energy_close_and_error_estimate_honest():
    deltas = updates(4, 200, 300, decay=0.5)
    got = randomized_left(deltas, K, seeded())
    U, S = exact_left(deltas)
    assert got.energy(K) == pytest.approx(exact_energy(S, K), abs=5e-3)
    assert got.energy(K) <= exact_energy(S, K) + 1e-6  # a sketch never captures more than the optimum
    assert got.subspace_error >= sin_theta(got.vectors[:, :K], U[:, :K])


def test_energy_counts_the_tail_the_sketch_never_saw():
    deltas = updates(3, 120, 150, decay=0.3)
    got = randomized_left(deltas, 8, seeded())
    total = sum(float(d.double().square().sum()) for d in deltas)
    assert got.total_energy == pytest.approx(total, rel=1e-9)
    assert got.energy(got.values.numel()) < 0.9  # 16 of 120 directions of a flat spectrum: far from all of it


def test_exactly_low_rank_inputs_are_recovered_exactly():
    deltas = updates(3, 150, 180, decay=1.0, rank=6)  # rank(M) ≤ 3 + 3·3 = 12 < q
    got = randomized_left(deltas, K, seeded())
    U, S = exact_left(deltas)
    r = int((S > S[0] * 1e-6).sum())
    assert got.numerical_rank == r
    assert sin_theta(got.vectors[:, :r], U[:, :r]) < 1e-5
    assert torch.allclose(got.values[:r], S[:r], rtol=1e-5)


def test_small_matrices_take_the_exact_path():
    deltas = updates(2, 40, 30, decay=1.0)
    got = randomized_left(deltas, 32, seeded())  # q = 120, capped at 40: nothing to save
    want = left_singular_of_blocks(deltas)
    assert not isinstance(got, RandomizedSpectrum)
    assert torch.equal(got.values, want.values)


def test_same_seed_same_result_and_seed_matters():
    deltas = updates(2, 100, 120, decay=0.5)
    a = randomized_left(deltas, 8, seeded(1))
    b = randomized_left(deltas, 8, seeded(1))
    c = randomized_left(deltas, 8, seeded(2))
    assert torch.equal(a.vectors, b.vectors)
    assert not torch.equal(a.vectors, c.vectors)


def test_ssam_with_randomized_bases_matches_float64_algorithm_1():
    """Δ = λ Σ U_cU_cᵀ Δ_i V_cV_cᵀ with U_c, V_c from the eigenvectors of Σ Δ_iΔ_iᵀ and Σ Δ_iᵀΔ_i (float64)."""
    deltas = updates(4, 160, 220, decay=1.5, seed=3)
    left, right = randomized_spectra(deltas, K, seeded())
    U, V = left.vectors[:, :K].double(), right.vectors[:, :K].double()
    merged = sum(U @ (U.T @ d.double() @ V) @ V.T for d in deltas) / 4

    D = [d.double() for d in deltas]
    A, B = sum(d @ d.T for d in D), sum(d.T @ d for d in D)
    Ue = torch.linalg.eigh(A).eigenvectors.flip(1)[:, :K]
    Ve = torch.linalg.eigh(B).eigenvectors.flip(1)[:, :K]
    reference = sum(Ue @ Ue.T @ d @ Ve @ Ve.T for d in D) / 4
    assert float((merged - reference).norm() / reference.norm()) < 1e-3


def test_krylov_width_is_three_blocks_and_capped():
    assert krylov_width(128, 4096) == 3 * 136
    assert krylov_width(4, 4096, depth=1) == 2 * 12
    assert krylov_width(128, 200) == 200


def test_reusing_the_krylov_products_equals_projecting_again(monkeypatch):
    """Mᵀ Q from the products made along the way (orthonormal blocks) = a fresh projection onto orth(K)."""
    from ssam_cli.consensus import randomized

    deltas = updates(4, 200, 300, decay=1.5)
    checks = []
    real = randomized._orthonormal
    monkeypatch.setattr(randomized, "_orthonormal", lambda Q: checks.append(real(Q)) or checks[-1])
    reused = randomized_left(deltas, K, seeded())
    monkeypatch.setattr(randomized, "_orthonormal", lambda Q: False)
    fresh = randomized_left(deltas, K, seeded())
    assert checks == [True]
    assert torch.allclose(reused.values[:K], fresh.values[:K], rtol=1e-5)
    assert sin_theta(reused.vectors[:, :K], fresh.vectors[:, :K]) < 1e-4
    assert reused.energy(K) == pytest.approx(fresh.energy(K), abs=1e-6)
