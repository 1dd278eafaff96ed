"""Consensus subspaces of several updates, computed without the d × d Gram matrices of Algorithm 1.

U_c are the top left singular vectors of M = [Δ_1 | … | Δ_n] (the eigenvectors of A = Σ Δ_iΔ_iᵀ = MMᵀ),
V_c the top right singular vectors of N = [Δ_1; …; Δ_n] (eigenvectors of B = Σ Δ_iᵀΔ_i = NᵀN).
Low-rank updates go through their factors (an R × R problem, R = Σ r_i); dense ones through the short side
of M in float64. Singular vectors come from an SVD, not from a float32 Gram, which would square the
condition number (see docs/pipeline.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ssam_cli.deltas import Delta, DenseDelta, LowRankDelta, all_lowrank

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)


@dataclass
class Spectrum:
    """Orthonormal singular vectors (columns, descending) and singular values of a stacked matrix."""

    vectors: torch.Tensor
    values: torch.Tensor  # float64, descending, length = vectors.shape[1]
    matrix_shape: tuple[int, int]

    @property
    def numerical_rank(self) -> int:
        """σ_j > σ_max · max(m, n) · ε_float32, the rule of numpy.linalg.matrix_rank for float32 data."""
        if self.values.numel() == 0 or float(self.values[0]) == 0.0:
            return 0
        tol = float(self.values[0]) * max(self.matrix_shape) * FLOAT32_EPS
        return int((self.values > tol).sum())

    def energy(self, k: int) -> float:
        """Share of Σσ² in the top k singular values (1.0 for an all-zero matrix)."""
        sq = self.values.square()
        total = float(sq.sum())
        return 1.0 if total == 0.0 else float(sq[:k].sum()) / total


def left_singular(X: torch.Tensor, matrix_shape: tuple[int, int] | None = None) -> Spectrum:
    """Left singular vectors and values of X (m × p): thin QR when tall, then an SVD of the small factor."""
    shape = matrix_shape or (X.shape[0], X.shape[1])
    if X.shape[1] == 0:
        return Spectrum(X.new_zeros(X.shape[0], 0), torch.zeros(0, dtype=torch.float64), shape)
    if X.shape[0] >= X.shape[1]:
        Q, R = torch.linalg.qr(X)
        Ur, S, _ = torch.linalg.svd(R.double())
        U = Q @ Ur.to(Q.dtype)
    else:
        Ud, S, _ = torch.linalg.svd(X.double(), full_matrices=False)
        U = Ud.to(X.dtype)
    return Spectrum(U, S, shape)


def left_singular_of_blocks(blocks: Sequence[torch.Tensor]) -> Spectrum:
    """Exact left spectrum of M = [X_1 | … | X_n] via the float64 Gram of its short side."""
    M = torch.cat([b.double() for b in blocks], dim=1)
    m, p = M.shape
    if m <= p:
        evals, evecs = torch.linalg.eigh(M @ M.T)
        order = torch.argsort(evals, descending=True)
        values = evals[order].clamp_min(0).sqrt()
        vectors = evecs[:, order]
    else:
        Q, R = torch.linalg.qr(M)
        Ur, values, _ = torch.linalg.svd(R)
        vectors = Q @ Ur
    return Spectrum(vectors.to(blocks[0].dtype), values, (m, p))


def _lowrank_spectra(deltas: Sequence[LowRankDelta]) -> tuple[Spectrum, Spectrum]:
    """Both spectra from the factors: MMᵀ = L'L'ᵀ with L' = [s_i B_i R_{A_i}ᵀ], where A_iᵀ = Q R_{A_i}."""
    left, right = [], []
    d_out, d_in = deltas[0].shape
    for d in deltas:
        if d.rank == 0 or d.scale == 0.0:
            continue
        _, Ra = torch.linalg.qr(d.A.T)  # A_i = Ra_ᵀ Q_ᵀ, so Δ_iΔ_iᵀ = s² B Raᵀ Ra Bᵀ
        _, Rb = torch.linalg.qr(d.B)
        left.append(d.scale * (d.B @ Ra.T))
        right.append(d.scale * (d.A.T @ Rb.T))
    ref = deltas[0].B
    L = torch.cat(left, dim=1) if left else ref.new_zeros(d_out, 0)
    H = torch.cat(right, dim=1) if right else ref.new_zeros(d_in, 0)
    n = len(deltas)
    return left_singular(L, (d_out, n * d_in)), left_singular(H, (d_in, n * d_out))


def spectra(deltas: Sequence[Delta]) -> tuple[Spectrum, Spectrum]:
    """Spectra of M = [Δ_1 | … | Δ_n] (left) and Nᵀ = [Δ_1ᵀ | … | Δ_nᵀ] (right), the exact way for the input kind."""
    if all_lowrank(list(deltas)):
        return _lowrank_spectra(deltas)  # type: ignore[arg-type]
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


def consensus_bases(deltas: Sequence[Delta], k: int) -> ConsensusBases:
    """Top-k consensus bases, k capped on each side at the numerical rank (never padded with noise)."""
    left, right = spectra(deltas)
    k_u = min(k, left.numerical_rank)
    k_v = min(k, right.numerical_rank)
    return ConsensusBases(left.vectors[:, :k_u], right.vectors[:, :k_v], left, right, k)


def project_sum(deltas: Sequence[Delta], U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """C = U_cᵀ (Σ Δ_i) V_c (k_u × k_v): the sum projected once, through the factors where low-rank."""
    C = U.new_zeros(U.shape[1], V.shape[1])
    for d in deltas:
        if isinstance(d, LowRankDelta):
            if d.rank:
                C += d.scale * ((U.T @ d.B) @ (d.A @ V))
        else:
            C += U.T @ d.tensor @ V
    return C


def weighted_sum(deltas: Sequence[Delta], weights: Sequence[float]) -> Delta:
    """Σ w_i Δ_i, kept factored (stacked factors, exact) when every delta is low-rank."""
    if all_lowrank(list(deltas)):
        Bs = [d.B * (w * d.scale) for d, w in zip(deltas, weights)]  # type: ignore[union-attr]
        As = [d.A for d in deltas]  # type: ignore[union-attr]
        return LowRankDelta(torch.cat(Bs, dim=1), torch.cat(As, dim=0))
    total = None
    for d, w in zip(deltas, weights):
        term = d.dense() * w
        total = term if total is None else total + term
    return DenseDelta(total)
