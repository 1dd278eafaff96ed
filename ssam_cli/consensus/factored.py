"""Consensus spectra of LoRA updates from their factors: an R × R problem per side (R = Σ r_i), never d × d.

With L = [s_1B_1 | … | s_nB_n] and H = [A_1ᵀ | … | A_nᵀ], M Mᵀ = L blockdiag(A_iA_iᵀ) Lᵀ and
NᵀN = H blockdiag(s_i² B_iᵀB_i) Hᵀ: the two R × R float64 Grams LᵀL and HᵀH hold everything both sides need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ssam_cli.deltas import LowRankDelta
from ssam_cli.spectra import Spectrum, left_singular, numerical_rank, rank_tolerance
from ssam_cli.threads import torch_threads


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
        return numerical_rank(self.values, self.gram.shape[0])

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
    live = values > rank_tolerance(float(values[0]), core.shape[0]) if values.numel() else values.bool()
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


def lowrank_spectra(deltas: Sequence[LowRankDelta]) -> tuple[Spectrum, Spectrum]:
    """Both spectra from the factors, with L = [s_i B_i] and H = [A_iᵀ]:
    MMᵀ = Σ s_i² B_i (A_iA_iᵀ) B_iᵀ = L blockdiag(A_iA_iᵀ) Lᵀ and NᵀN = H blockdiag(s_i² B_iᵀB_i) Hᵀ.
    The two R × R Grams LᵀL and HᵀH hold everything both sides need (their diagonal blocks are the inner
    parts), so the only d-sized work is two Grams and the top-k vectors. The Grams are float64, which keeps the
    result exact whatever the conditioning; float32 Grams would be 2.6× faster and, measured on steep synthetic
    spectra (benchmarks/perf.py's accuracy check), move the merged update by up to 6e-6 relative, with no bound
    that holds in general. The R × R eigendecompositions must be float64 (float32 there: 1e-3). The top-k
    vectors are float32 products of the float32 factors with float64-computed coefficients."""
    d_out, d_in = deltas[0].shape
    n = len(deltas)
    live = [deltas[i] for i in live_indices(deltas)]
    if not live:
        ref = deltas[0].B
        return (left_singular(ref.new_zeros(d_out, 0), (d_out, n * d_in)),
                left_singular(ref.new_zeros(d_in, 0), (d_in, n * d_out)))
    dtype = live[0].B.dtype
    Ls = [d.B * d.scale for d in live]
    Hs = [d.A.T for d in live]
    gram_l, gram_h = _gram(Ls), _gram(Hs)
    left = _factored_side(Ls, gram_l, gram_h, (d_out, n * d_in), dtype)
    right = _factored_side(Hs, gram_h, gram_l, (d_in, n * d_out), dtype)
    return left, right


def live_indices(deltas: Sequence[LowRankDelta]) -> list[int]:
    """The updates that enter the factored spectra (rank > 0, non-zero scale), in order: one block each."""
    return [i for i, d in enumerate(deltas) if d.rank and d.scale != 0.0]


@dataclass
class BlockSvd:
    """The thin SVD of one block's update Δ_j = L_j H_jᵀ in coefficients of its own factors: its left singular
    vectors are L_j·a, its right ones H_j·b (float64, r_j columns, σ descending; columns of σ = 0 are zero)."""

    values: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor


def block_svds(left: FactoredSpectrum, right: FactoredSpectrum) -> list[BlockSvd]:
    """Every block's own SVD from the Grams the consensus spectra already hold: r_j × r_j work per block.

    With C_jC_jᵀ = H_jᵀH_j (left.roots[j], the Cholesky factor the left side used), Δ_jΔ_jᵀ = L_jC_j(L_jC_j)ᵀ,
    so the eigenpairs (Λ, W) of C_jᵀ(L_jᵀL_j)C_j give U_j = L_j·C_jWΛ^-½ and V_j = Δ_jᵀU_jΛ^-½ = H_j(L_jᵀL_j)aΛ^-½.
    """
    sizes = [r.shape[0] for r in left.roots]
    out = []
    start = 0
    for r, C in zip(sizes, left.roots):
        gram = left.gram[start : start + r, start : start + r]
        core = C.T @ gram @ C
        lam, W = torch.linalg.eigh((core + core.T) / 2)
        sigma = lam.flip(0).clamp_min(0).sqrt()
        inverse = torch.where(sigma > 0, 1.0 / sigma, torch.zeros_like(sigma))
        a = (C @ W.flip(1)) * inverse
        out.append(BlockSvd(sigma, a, (gram @ a) * inverse))
        start += r
    return out


def block_slices(spectrum: FactoredSpectrum) -> list[slice]:
    """Where each block's columns sit in the R × R Gram."""
    sizes = [r.shape[0] for r in spectrum.roots]
    return [slice(sum(sizes[:j]), sum(sizes[: j + 1])) for j in range(len(sizes))]


def _gram(blocks: Sequence[torch.Tensor]) -> torch.Tensor:
    """[X_1 | … | X_n]ᵀ[X_1 | … | X_n] in float64, one product (measured faster than the 10 of 16 block products
    of its upper triangle for n = 4, r = 128: 0.13 s against 0.18 s at d = 4096, one thread), symmetrised."""
    X = torch.cat(list(blocks), dim=1).double()
    G = X.T @ X
    return (G + G.T) / 2
