"""SSAM's consensus bases U_c, V_c of several updates, by the exact route for the input kind, capped at k.

U_c are the top left singular vectors of M = [Δ_1 | … | Δ_n] (the eigenvectors of A = Σ Δ_iΔ_iᵀ = MMᵀ),
V_c the top right singular vectors of N = [Δ_1; …; Δ_n] (eigenvectors of B = Σ Δ_iᵀΔ_i = NᵀN).
Low-rank updates go through their factors (consensus/factored.py); dense ones through the short side of M in
float64 (consensus/exact.py) or, for large weights, a randomized block Krylov sketch (consensus/randomized.py).
Singular vectors come from an SVD or a float64 Gram, never a float32 Gram (see docs/pipeline.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ssam_cli.consensus.exact import left_singular_of_blocks
from ssam_cli.consensus.factored import FactoredSpectrum, lowrank_spectra
from ssam_cli.deltas import Delta, LowRankDelta, all_lowrank
from ssam_cli.spectra import Spectrum


def stacked_spectra(deltas: Sequence[Delta]) -> tuple[Spectrum, Spectrum]:
    """Spectra of M = [Δ_1 | … | Δ_n] (left) and Nᵀ = [Δ_1ᵀ | … | Δ_nᵀ] (right), the exact way for the input kind."""
    if all_lowrank(list(deltas)):
        return lowrank_spectra(deltas)  # type: ignore[arg-type]
    dense = [d.dense() for d in deltas]
    return left_singular_of_blocks(dense), left_singular_of_blocks([x.T for x in dense])


@dataclass
class ConsensusBases:
    """U_c (d_out × k_u) and V_c (d_in × k_v) with the spectra they were cut from."""

    U: torch.Tensor
    V: torch.Tensor
    left: Spectrum
    right: Spectrum
    requested_rank: int

    @property
    def capped(self) -> bool:
        return min(self.U.shape[1], self.V.shape[1]) < self.requested_rank

    @property
    def factored(self) -> bool:
        return isinstance(self.left, FactoredSpectrum) and isinstance(self.right, FactoredSpectrum)

    def projected_sum(self) -> torch.Tensor:
        """C = U_cᵀ S V_c from the factors' Grams (S = L Hᵀ, U_c = L·a, V_c = H·b: C = aᵀ(LᵀL)(HᵀH)b), float64.

        Only for factored bases; equal to project_sum(deltas, U, V) without its d-sized products."""
        left, right = self.left, self.right
        assert isinstance(left, FactoredSpectrum) and isinstance(right, FactoredSpectrum)
        a, b = left.coeffs(self.U.shape[1]), right.coeffs(self.V.shape[1])
        return ((a.T @ left.gram) @ (right.gram @ b)).to(self.U.dtype)

    def sum_norm(self) -> float:
        """‖Σ Δ_i‖_F = √tr(LᵀL·HᵀH), exact from the Grams (factored bases only)."""
        left, right = self.left, self.right
        assert isinstance(left, FactoredSpectrum) and isinstance(right, FactoredSpectrum)
        return float((left.gram * right.gram).sum().clamp_min(0).sqrt())


def consensus_bases(deltas: Sequence[Delta], k: int) -> ConsensusBases:
    """Top-k consensus bases, k capped on each side at the numerical rank (never padded with noise)."""
    return cut_bases(*stacked_spectra(deltas), k)


def cut_bases(left: Spectrum, right: Spectrum, k: int) -> ConsensusBases:
    """The top-k bases of two spectra (from any route: exact, factored, randomized), capped at their ranks."""
    k_u = min(k, left.numerical_rank)
    k_v = min(k, right.numerical_rank)
    return ConsensusBases(left.top(k_u), right.top(k_v), left, right, k)


def project_sum(deltas: Sequence[Delta], U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """C = U_cᵀ (Σ Δ_i) V_c (k_u × k_v): the sum projected once, through the factors where low-rank; dense
    updates are added first (n cheap additions instead of n products with a d_out × d_in matrix)."""
    C = U.new_zeros(U.shape[1], V.shape[1])
    dense = None
    for d in deltas:
        if isinstance(d, LowRankDelta):
            if d.rank:
                C += d.scale * ((U.T @ d.B) @ (d.A @ V))
        else:
            dense = d.tensor.clone() if dense is None else dense.add_(d.tensor)
    if dense is not None:
        C += (U.T @ dense) @ V
    return C
