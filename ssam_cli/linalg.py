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
from ssam_cli.threads import torch_threads

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


class FactoredSpectrum(Spectrum):
    """A spectrum whose vectors are [X_1 | … | X_n] @ coeffs, formed only for the columns asked for.

    SSAM needs the top k of R = Σ r_i vectors; forming all R of them (or even all R coefficient columns)
    would be R-sized work per side for nothing, so coeffs = blockdiag(roots) · W · Λ^-½ is kept in pieces.
    The basis's Gram is kept too: with both sides' Grams, U_cᵀ S V_c and ‖S‖_F cost only R × R work.
    """

    def __init__(self, blocks: Sequence[torch.Tensor], gram: torch.Tensor, roots: Sequence[torch.Tensor],
                 W: torch.Tensor, values: torch.Tensor, matrix_shape: tuple[int, int], dtype: torch.dtype) -> None:
        self.blocks = list(blocks)  # the basis [X_1 | … | X_n] (d × r_i each), never concatenated
        self.gram = gram  # [X_i]ᵀ[X_i], R × R, float64
        self.roots, self.W = list(roots), W  # r_i × r_i factors of the inner blocks; R × live eigenvectors
        self.values, self.matrix_shape, self.dtype = values, matrix_shape, dtype

    @property
    def vectors(self) -> torch.Tensor:  # type: ignore[override]
        return self.top(self.values.numel())

    @property
    def numerical_rank(self) -> int:
        """σ_j > σ_1 · R · ε_float32: the tolerance of the R × R problem the values come from, not of the d-sized
        matrix (max(m, n) · ε would cut a steep but full-rank spectrum well inside its exact rank)."""
        if self.values.numel() == 0 or float(self.values[0]) == 0.0:
            return 0
        return int((self.values > float(self.values[0]) * FLOAT32_EPS * self.gram.shape[0]).sum())

    def coeffs(self, k: int) -> torch.Tensor:
        """R × k, float64: the top k singular vectors are [X_1 | … | X_n] @ coeffs(k)."""
        rows = torch.split(self.W[:, :k], [r.shape[0] for r in self.roots])
        return torch.cat([root @ w for root, w in zip(self.roots, rows)]) / self.values[:k]

    def top(self, k: int) -> torch.Tensor:
        """The first k singular vectors (d × k), one product per block in the blocks' dtype."""
        rows = torch.split(self.coeffs(k).to(self.blocks[0].dtype), [b.shape[1] for b in self.blocks])
        out = self.blocks[0] @ rows[0]
        for X, c in zip(self.blocks[1:], rows[1:]):
            out.addmm_(X, c)
        return out.to(self.dtype)


def _factored_side(blocks: Sequence[torch.Tensor], gram_x: torch.Tensor, inner: torch.Tensor,
                   matrix_shape: tuple[int, int], dtype: torch.dtype) -> FactoredSpectrum:
    """Left singular pairs of M with MMᵀ = X·G·Xᵀ, X = [X_1 | … | X_n] (d × R), G = blockdiag(inner_ii),
    in O(d·R·k + R³).

    With G = CCᵀ (C = blockdiag(C_i), C_iC_iᵀ = inner_ii), MMᵀ = (XC)(XC)ᵀ: the eigenpairs of the R × R
    Gram Cᵀ(XᵀX)C are the right singular pairs of XC, and U = XC·W·Λ^-½. The Gram is float64, where
    squaring the condition number still leaves 1e-8 relative resolution of σ: far below float32 inputs.
    """
    with torch_threads(1):  # small decompositions: one thread (see threads.py)
        roots = _block_roots(inner, [b.shape[1] for b in blocks])
        core = _congruence(gram_x, roots)
        lam, W = torch.linalg.eigh(core)
    lam, W = lam.flip(0).clamp_min(0), W.flip(1)
    values = lam.sqrt()
    # Below σ_1·R·ε_float32 the factors' own rounding dominates: such directions are noise, and dividing by
    # their σ would break orthonormality. FactoredSpectrum.numerical_rank cuts at the same place.
    live = values > values[0] * FLOAT32_EPS * core.shape[0] if values.numel() else values.bool()
    return FactoredSpectrum(blocks, gram_x, roots, W[:, live], values[live], matrix_shape, dtype)


def _block_roots(G: torch.Tensor, ranks: Sequence[int]) -> list[torch.Tensor]:
    """C_i with C_iC_iᵀ = G_ii per diagonal block: Cholesky (r³/3 work), or the symmetric PSD square root where
    a block is singular (a rank-deficient factor) and Cholesky breaks down."""
    roots = []
    start = 0
    for r in ranks:
        block = G[start : start + r, start : start + r]
        L, info = torch.linalg.cholesky_ex(block)
        if int(info) != 0:
            mu, Z = torch.linalg.eigh((block + block.T) / 2)
            L = (Z * mu.clamp_min(0).sqrt()) @ Z.T
        roots.append(L)
        start += r
    return roots


def _congruence(G: torch.Tensor, roots: Sequence[torch.Tensor]) -> torch.Tensor:
    """Cᵀ G C for C = blockdiag(roots), block by block (2·R²·r work instead of 2·R³), symmetrised for eigh."""
    sizes = [r.shape[0] for r in roots]
    GC = torch.cat([g @ r for g, r in zip(torch.split(G, sizes, dim=1), roots)], dim=1)
    core = torch.cat([r.T @ g for g, r in zip(torch.split(GC, sizes, dim=0), roots)], dim=0)
    return (core + core.T) / 2


def _lowrank_spectra(deltas: Sequence[LowRankDelta]) -> tuple[Spectrum, Spectrum]:
    """Both spectra from the factors, with L = [s_i B_i] and H = [A_iᵀ]:
    MMᵀ = Σ s_i² B_i (A_iA_iᵀ) B_iᵀ = L blockdiag(A_iA_iᵀ) Lᵀ and NᵀN = H blockdiag(s_i² B_iᵀB_i) Hᵀ.
    The two R × R Grams LᵀL and HᵀH hold everything both sides need (their diagonal blocks are the inner
    parts), so the only d-sized work is two Grams and the top-k vectors. The Grams are float64: a float32
    Gram would square the condition number away (the weak directions of a decaying spectrum). The top-k
    vectors are float32 products of the float32 factors with float64-computed coefficients."""
    d_out, d_in = deltas[0].shape
    n = len(deltas)
    live = [d for d in deltas if d.rank and d.scale != 0.0]
    if not live:
        ref = deltas[0].B
        return (left_singular(ref.new_zeros(d_out, 0), (d_out, n * d_in)),
                left_singular(ref.new_zeros(d_in, 0), (d_in, n * d_out)))
    dtype = live[0].B.dtype
    Ls = [d.B * d.scale for d in live]
    Hs = [d.A.T for d in live]
    gram_l, gram_h = _block_gram([x.double() for x in Ls]), _block_gram([x.double() for x in Hs])
    left = _factored_side(Ls, gram_l, gram_h, (d_out, n * d_in), dtype)
    right = _factored_side(Hs, gram_h, gram_l, (d_in, n * d_out), dtype)
    return left, right


def _block_gram(blocks: Sequence[torch.Tensor]) -> torch.Tensor:
    """[X_1 | … | X_n]ᵀ[X_1 | … | X_n] from its upper blocks X_iᵀX_j (i ≤ j): 10 of 16 products for n = 4."""
    sizes = [b.shape[1] for b in blocks]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    R = sum(sizes)
    G = blocks[0].new_empty(R, R)
    for i, (Xi, a) in enumerate(zip(blocks, starts)):
        for Xj, b in zip(blocks[i:], starts[i:]):
            block = Xi.T @ Xj
            G[a : a + Xi.shape[1], b : b + Xj.shape[1]] = block
            G[b : b + Xj.shape[1], a : a + Xi.shape[1]] = block.T
    return G


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
    return cut_bases(*spectra(deltas), k)


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
