"""The consensus spectra against float64 SVDs of the explicitly stacked matrices (tolerance 1e-5 relative)."""

from __future__ import annotations

import pytest
import torch

from ssam_cli.deltas import DenseDelta, LowRankDelta
from ssam_cli.consensus.bases import consensus_bases, stacked_spectra as spectra
from ssam_cli.deltas import weighted_sum
from ssam_cli.spectra import Spectrum


def stacked_singular_values(dense: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    M = torch.cat([d.double() for d in dense], dim=1)
    N = torch.cat([d.double() for d in dense], dim=0)
    return torch.linalg.svdvals(M), torch.linalg.svdvals(N)


@pytest.mark.parametrize("lowrank", [True, False])
def test_singular_values_match_the_stacked_matrices(lowrank):
    g = torch.Generator().manual_seed(0)
    if lowrank:
        deltas = [LowRankDelta(torch.randn(30, 3, generator=g), torch.randn(3, 22, generator=g), 1.5) for _ in range(3)]
    else:
        deltas = [DenseDelta(torch.randn(30, 22, generator=g)) for _ in range(3)]
    left, right = spectra(deltas)
    sm, sn = stacked_singular_values([d.dense() for d in deltas])
    r = left.numerical_rank
    assert torch.allclose(left.values[:r], sm[:r], rtol=1e-5)
    assert torch.allclose(right.values[: right.numerical_rank], sn[: right.numerical_rank], rtol=1e-5)
    U = left.vectors.double()
    assert torch.allclose(U.T @ U, torch.eye(U.shape[1], dtype=torch.float64), atol=1e-5)


def test_left_and_right_ranks_may_differ_and_are_capped_separately():
    """Δ1 = u v1ᵀ, Δ2 = u v2ᵀ: M has rank 1, N has rank 2."""
    u = torch.randn(10, 1)
    deltas = [LowRankDelta(u, torch.randn(1, 8)), LowRankDelta(u, torch.randn(1, 8))]
    bases = consensus_bases(deltas, 5)
    assert bases.U.shape[1] == 1 and bases.V.shape[1] == 2 and bases.capped


def test_energy_and_numerical_rank():
    s = Spectrum(torch.eye(3), torch.tensor([3.0, 4.0, 0.0], dtype=torch.float64).sort(descending=True).values, (3, 3))
    assert s.energy(1) == pytest.approx(16 / 25)
    assert s.numerical_rank == 2


def test_weighted_sum_stays_factored_and_exact():
    g = torch.Generator().manual_seed(1)
    deltas = [LowRankDelta(torch.randn(6, 2, generator=g), torch.randn(2, 5, generator=g), 2.0) for _ in range(2)]
    s = weighted_sum(deltas, [0.5, 3.0])
    assert isinstance(s, LowRankDelta) and s.rank == 4
    assert torch.allclose(s.dense(), 0.5 * deltas[0].dense() + 3.0 * deltas[1].dense(), atol=1e-5)
