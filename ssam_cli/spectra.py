"""Singular spectra: the numerical-rank rule, energy shares, and exact SVDs of updates (factored when low-rank).

One home for each rule every method, the consensus bases, the merge spaces and inspect-spectrum share:
  * numerical rank: σ_j > σ_1 · size · ε_float32 (numpy.linalg.matrix_rank's rule for float32 data with
    size = max(m, n); the factored consensus path passes the size R of the problem its values come from);
  * energy share at k: Σ_{j<k} σ_j² / Σ σ_j²;
  * the thin SVD of an update: from the r × r core for a LoRA update s·B·A (thin QR of B and Aᵀ), so no
    d_out × d_in matrix is built; a full SVD otherwise;
  * the orthogonal polar factor (TSV, Iso-CTS).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssam_cli.deltas import Delta, LowRankDelta

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)


def rank_tolerance(top: float, size: int) -> float:
    """σ_1 · size · ε_float32: below it a singular value is rounding noise of float32 data."""
    return top * size * FLOAT32_EPS


def numerical_rank(values: torch.Tensor, size: int) -> int:
    """How many of the descending singular values exceed rank_tolerance(σ_1, size) (0 for a zero matrix)."""
    if values.numel() == 0 or float(values[0]) <= 0.0:
        return 0
    return int((values > rank_tolerance(float(values[0]), size)).sum())


def energy_share(values: torch.Tensor, k: int) -> float:
    """Σ_{j<k} σ_j² / Σ σ_j² (1.0 for an all-zero matrix: nothing is lost)."""
    sq = values.double().square()
    total = float(sq.sum())
    return 1.0 if total == 0.0 else float(sq[:k].sum()) / total


def smallest_k(values: torch.Tensor, share: float) -> int:
    """The smallest k with energy_share(values, k) ≥ share (0 for an all-zero matrix)."""
    sq = values.double().square()
    total = float(sq.sum())
    if total == 0.0:
        return 0
    cum = torch.cumsum(sq, 0) / total
    # 1e-12 absorbs the rounding of a cumulative sum that reaches the share exactly.
    return min(int((cum < share - 1e-12).sum()) + 1, int(values.numel()))


@dataclass
class Spectrum:
    """Orthonormal singular vectors (columns, descending) and singular values of a stacked matrix."""

    vectors: torch.Tensor
    values: torch.Tensor  # float64, descending, length = vectors.shape[1]
    matrix_shape: tuple[int, int]

    @property
    def numerical_rank(self) -> int:
        return numerical_rank(self.values, max(self.matrix_shape))

    def energy(self, k: int) -> float:
        return energy_share(self.values, k)

    def top(self, k: int) -> torch.Tensor:
        """The first k singular vectors (columns)."""
        return self.vectors[:, :k]


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


@dataclass
class ThinSvd:
    """Δ = U diag(S) Vh with orthonormal columns of U, rows of Vh; S descending."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor

    def top(self, k: int) -> "ThinSvd":
        return ThinSvd(self.U[:, :k], self.S[:k], self.Vh[:k])

    def numerical_rank(self, shape: tuple[int, int]) -> int:
        return numerical_rank(self.S, max(shape))

    def nonzero(self, shape: tuple[int, int]) -> "ThinSvd":
        """Only the numerically non-zero part: singular vectors of zero values are arbitrary, never used."""
        return self.top(self.numerical_rank(shape))

    def dense(self) -> torch.Tensor:
        return (self.U * self.S) @ self.Vh


def thin_svd(delta: Delta) -> ThinSvd:
    """The exact thin SVD of Δ: from the r × r core (float64) for low-rank updates, a full SVD otherwise."""
    if isinstance(delta, LowRankDelta):
        B, A = delta.B, delta.A
        d_out, d_in = delta.shape
        if delta.rank == 0:
            return ThinSvd(B.new_zeros(d_out, 0), B.new_zeros(0), A.new_zeros(0, d_in))
        Qb, Rb = torch.linalg.qr(B)
        Qa, Ra = torch.linalg.qr(A.T)
        core = (Rb.double() @ Ra.double().T) * delta.scale
        u, s, vh = torch.linalg.svd(core)
        return ThinSvd(Qb @ u.to(B.dtype), s.to(B.dtype), vh.to(A.dtype) @ Qa.T)
    U, S, Vh = torch.linalg.svd(delta.dense(), full_matrices=False)
    return ThinSvd(U, S, Vh)


def polar_factor(X: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor P Qᵀ of X = P Σ Qᵀ: the nearest matrix with orthonormal columns (or rows).

    A tall X goes through a thin QR first (X = Q_x R, polar(X) = Q_x polar(R)): an SVD of the small square
    R instead of the tall X, several times faster for d × n·k concatenated singular vectors.
    """
    if X.shape[0] < X.shape[1]:
        return polar_factor(X.T).T
    if X.shape[0] > X.shape[1]:
        Qx, R = torch.linalg.qr(X)
        return Qx @ polar_factor(R)
    P, _, Qh = torch.linalg.svd(X)
    return P @ Qh
