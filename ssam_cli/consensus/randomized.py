"""Consensus spectra of dense updates by a randomized block Krylov method: no d × d Gram, no full SVD.

For full fine-tunes the exact route costs an eigen-decomposition of an 11008 × 11008 matrix per MLP weight
(minutes on a laptop CPU). U_c only needs the top k left singular vectors of M = [Δ_1 | … | Δ_n] (and V_c
those of Nᵀ = [Δ_1ᵀ | … | Δ_nᵀ]), which a few passes over the Δ_i find (Musco & Musco 2015, "Randomized
block Krylov methods for stronger and faster approximate SVD"; Halko, Martinsson & Tropp 2011):
  K = [Y_0 | Y_1 | … | Y_p],  Y_0 = orth(M Ω),  Y_j = orth(M orth(Mᵀ Y_{j-1})) (each orthogonalised against
  the earlier blocks);  then the SVD of Qᵀ M (Q = orth(K)) gives U ≈ Q Ũ and σ.
Block width b = k + 8 and depth p = 2 cost 6 block passes (the projection Qᵀ M reuses the Mᵀ Y_j already
made) and capture more of ‖M‖_F² at k than subspace iteration with a 2k-wide sketch and 2 power iterations
(7 passes of twice the width): the Krylov space keeps every intermediate block, which matters where the
spectrum is flat around k (full fine-tunes: a full-rank tail). Measured on the benchmark's 4096 × 11008 weight (n = 4, k = 128, one thread):
energy deficit at k 2.3–2.4·10⁻⁴ against 3.4–4.9·10⁻⁴, in 0.74–0.79× the CPU time (docs/performance.md).
Depth 1 would save another third but left a deficit of 8·10⁻⁴ there, too close to the 10⁻³ budget.
M and Mᵀ are only ever applied block by block (M X = Σ Δ_i X_i, Mᵀ Y = [Δ_iᵀ Y]), in float32, with the
small factor decomposed in float64 (a float32 Gram would square the condition number).

What is reported, per side:
  * energy(k): Σ_{j≤k} σ̃_j² / ‖M‖_F², the share of ‖M‖_F² the returned k vectors do capture (exact for the
    returned basis; ‖M‖_F² = Σ‖Δ_i‖_F² is computed exactly, so the tail the sketch never saw is counted);
  * subspace_error: an a-posteriori estimate of sin θ between the returned top-k subspace and the exact one,
    ‖MMᵀU_k − U_kΣ_k²‖_2 / (σ̃_k² − σ̃_{k+1}²) (a Davis–Kahan residual bound with the sketch's gap), capped at 1;
    near 1 means the spectrum has no gap at k and the k-subspace is not well defined, whatever the method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ssam_cli.consensus.exact import left_singular_of_blocks
from ssam_cli.spectra import Spectrum


@dataclass
class RandomizedSpectrum(Spectrum):
    """A Spectrum holding only the top q singular pairs, with the matrix's full ‖·‖_F² and an error estimate."""

    total_energy: float = 0.0  # ‖M‖_F², so that energy(k) counts the tail the sketch did not return
    subspace_error: float = 0.0  # estimated sin θ of the top-k subspace (k = the `k` it was computed for)
    k: int = 0
    width: int = 0  # q = (depth + 1)·b, the width of the Krylov space
    depth: int = 0  # p: the space holds (MMᵀ)^j M Ω for j = 0..p

    def energy(self, k: int) -> float:
        if self.total_energy == 0.0:
            return 1.0
        return min(1.0, float(self.values[:k].square().sum()) / self.total_energy)


def krylov_width(k: int, short_side: int, depth: int = 2) -> int:
    """q = (depth + 1)·b for blocks of b = k + 8 columns (a little room for the k-th vector to converge),
    at most the short side of M."""
    return min(short_side, (depth + 1) * (k + 8))


class _Stacked:
    """M = [X_1 | … | X_n], applied block by block so that it is never formed."""

    def __init__(self, blocks: Sequence[torch.Tensor]) -> None:
        self.blocks = list(blocks)
        self.widths = [int(b.shape[1]) for b in self.blocks]

    def __matmul__(self, X: torch.Tensor) -> torch.Tensor:
        """M @ X for X of n·p rows (split by block)."""
        parts = torch.split(X, self.widths, dim=0)
        out = self.blocks[0] @ parts[0]
        for b, x in zip(self.blocks[1:], parts[1:]):
            out.addmm_(b, x)
        return out

    def t_matmul(self, Y: torch.Tensor) -> torch.Tensor:
        """Mᵀ @ Y, stacked: [X_1ᵀY; …; X_nᵀY]."""
        return torch.cat([b.T @ Y for b in self.blocks], dim=0)


def _orth(X: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(X)[0]


def randomized_left(blocks: Sequence[torch.Tensor], k: int, generator: torch.Generator, *,
                    depth: int = 2) -> Spectrum:
    """Top singular pairs of M = [X_1 | … | X_n] (each X_i: m × p_i) through products with the blocks.

    Falls back to the exact spectrum (linalg.left_singular_of_blocks) when the Krylov space would be as wide
    as the short side of M: then there is nothing to save and exactness is free.
    """
    M = _Stacked(blocks)
    m, p = int(blocks[0].shape[0]), sum(M.widths)
    q = krylov_width(k, min(m, p), depth)
    if q >= min(m, p):
        return left_singular_of_blocks(blocks)
    dtype, device = blocks[0].dtype, blocks[0].device
    b = q // (depth + 1)

    Y = _orth(M @ torch.randn(p, b, generator=generator, dtype=dtype, device=device))
    krylov, products = [Y], []  # the orthonormal blocks Y_j and their Mᵀ Y_j
    for _ in range(depth):
        products.append(M.t_matmul(Y))
        Y = M @ _orth(products[-1])
        done = torch.cat(krylov, dim=1)
        for _ in range(2):  # block Gram–Schmidt, twice: the new block keeps only what the earlier ones lack
            Y = Y - done @ (done.T @ Y)
        Y = _orth(Y)
        krylov.append(Y)
    Q = torch.cat(krylov, dim=1)
    if _orthonormal(Q):  # then Mᵀ Q is the products already made, plus one block: 2 block passes saved
        W = torch.cat([*products, M.t_matmul(Y)], dim=1)
    else:  # a block that was nearly dependent on the earlier ones (M of low rank): orthonormalise and project
        Q = _orth(Q)
        W = M.t_matmul(Q)  # Mᵀ Q = (Qᵀ M)ᵀ: p × q
    _, R = torch.linalg.qr(W)  # Qᵀ M = Rᵀ Zᵀ: the SVD of the small Rᵀ (float64) gives the left pairs
    Ur, values, _ = torch.linalg.svd(R.T.double())
    U = Q @ Ur.to(dtype)

    total = float(sum(torch.linalg.vector_norm(x.double()).square() for x in blocks))
    kk = min(k, q)
    error = _subspace_error(M, W @ Ur[:, :kk].to(dtype), U[:, :kk], values, kk)
    return RandomizedSpectrum(U, values, (m, p), total_energy=total, subspace_error=error, k=k, width=q,
                              depth=depth)


def _orthonormal(Q: torch.Tensor, tol: float = 1e-5) -> bool:
    """max |QᵀQ − I| ≤ tol: orthonormal to float32 working accuracy (q² · m work, a few % of a pass)."""
    G = Q.T @ Q
    return float((G - torch.eye(G.shape[0], dtype=G.dtype, device=G.device)).abs().max()) <= tol


def _subspace_error(M: _Stacked, MtU: torch.Tensor, U: torch.Tensor, values: torch.Tensor, k: int) -> float:
    """‖MMᵀU_k − U_kΣ_k²‖_2 / (σ̃_k² − σ̃_{k+1}²), capped at 1; costs one more pass over the blocks."""
    if k == 0:
        return 0.0
    lam = values[:k].square()
    residual = float(torch.linalg.matrix_norm((M @ MtU).double() - U.double() * lam, ord=2))
    gap = float(lam[-1] - values[k].square()) if k < values.numel() else 0.0
    return 1.0 if gap <= 0.0 else min(1.0, residual / gap)


def randomized_spectra(deltas: Sequence[torch.Tensor], k: int, generator: torch.Generator, *,
                       depth: int = 2) -> tuple[Spectrum, Spectrum]:
    """(left, right) spectra of M = [Δ_1 | … | Δ_n] and Nᵀ = [Δ_1ᵀ | … | Δ_nᵀ] for dense Δ_i, top k by sketch.

    Same contract as linalg.spectra, restricted to the top q = (depth + 1)·(k + 8) pairs; U_c / V_c are the
    first k vectors.
    """
    left = randomized_left(list(deltas), k, generator, depth=depth)
    right = randomized_left([d.T for d in deltas], k, generator, depth=depth)
    return left, right
