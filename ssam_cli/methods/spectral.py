"""Singular value decompositions of updates, exact and factored where the update is low-rank.

TSV, Iso-C/Iso-CTS and OptMerge all start from an SVD of a task vector or of their sum; for a LoRA
update s·B·A the SVD comes from an r × r core (thin QR of B and Aᵀ), so no d_out × d_in matrix is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssam_cli.deltas import Delta, LowRankDelta

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)


@dataclass
class ThinSvd:
    """Δ = U diag(S) Vh with orthonormal columns of U, rows of Vh; S descending."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor

    def top(self, k: int) -> "ThinSvd":
        return ThinSvd(self.U[:, :k], self.S[:k], self.Vh[:k])

    def numerical_rank(self, shape: tuple[int, int]) -> int:
        """σ_j > σ_max · max(shape) · ε_float32 (numpy.linalg.matrix_rank's rule for float32 data)."""
        if self.S.numel() == 0 or float(self.S[0]) == 0.0:
            return 0
        return int((self.S > float(self.S[0]) * max(shape) * FLOAT32_EPS).sum())

    def nonzero(self, shape: tuple[int, int]) -> "ThinSvd":
        """Only the numerically non-zero part: singular vectors of zero values are arbitrary, never used."""
        return self.top(self.numerical_rank(shape))

    def dense(self) -> torch.Tensor:
        return (self.U * self.S) @ self.Vh


def thin_svd(delta: Delta) -> ThinSvd:
    """The exact thin SVD of Δ: from the r × r core for low-rank updates, a full SVD otherwise."""
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
