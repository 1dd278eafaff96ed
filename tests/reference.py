"""Algorithm 1 of the SSAM paper, written directly in float64: the yardstick for every fast path."""

from __future__ import annotations

import torch


def ssam_reference(deltas: list[torch.Tensor], k: int, lam: float) -> torch.Tensor:
    """A = ΣΔΔᵀ, B = ΣΔᵀΔ, top-k eigenvectors, Σ P_u Δ_i P_v, × λ — exactly as the paper writes it."""
    ds = [d.double() for d in deltas]
    A = sum(d @ d.T for d in ds)
    B = sum(d.T @ d for d in ds)
    ea, Ua = torch.linalg.eigh(A)
    eb, Vb = torch.linalg.eigh(B)
    U = Ua[:, torch.argsort(ea, descending=True)[:k]]
    V = Vb[:, torch.argsort(eb, descending=True)[:k]]
    Pu, Pv = U @ U.T, V @ V.T
    return lam * sum(Pu @ d @ Pv for d in ds)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref.double()).norm() / ref.double().norm())


def decaying_lowrank(d_out: int, d_in: int, r: int, decay: float, generator: torch.Generator,
                     shared: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA-like factors B (d_out × r), A (r × d_in) with singular values decay^j, optionally sharing columns."""
    U, _ = torch.linalg.qr(torch.randn(d_out, r, generator=generator, dtype=torch.float64))
    if shared is not None:
        U[:, : shared.shape[1]] = shared
        U, _ = torch.linalg.qr(U)
    V, _ = torch.linalg.qr(torch.randn(d_in, r, generator=generator, dtype=torch.float64))
    s = decay ** torch.arange(r, dtype=torch.float64)
    return (U * s).float(), V.T.contiguous().float()


def ties_reference(updates: list[torch.Tensor], density: float, lam: float = 1.0) -> torch.Tensor:
    """TIES (Yadav et al., Alg. 1) in float64: keep each task's top ⌊density·numel⌋ |τ|, γ = sgn(Σ τ̂),
    mean of the kept values whose sign is γ."""
    trimmed = []
    for t in updates:
        flat = t.double().flatten()
        keep = torch.zeros_like(flat)
        idx = torch.argsort(flat.abs(), descending=True)[: int(density * flat.numel())]
        keep[idx] = flat[idx]
        trimmed.append(keep)
    stacked = torch.stack(trimmed)
    gamma = torch.sign(stacked.sum(0))
    agree = (torch.sign(stacked) == gamma) & (stacked != 0)
    merged = (stacked * agree).sum(0) / agree.sum(0).clamp_min(1)
    return lam * merged.reshape(updates[0].shape)


def core_space_reference(factors: list[tuple[torch.Tensor, torch.Tensor, float]], merge) -> torch.Tensor:
    """Core Space merging (Panariello et al., 2025) in float64: U_B, V_A orthonormal bases (left singular vectors,
    cut at the numerical rank) of [s_1B_1 | … | s_nB_n] and [A_1ᵀ | … | A_nᵀ], cores M_i = U_Bᵀ(s_iB_iA_i)V_A,
    `merge(cores)` on them, mapped back as U_B·M·V_Aᵀ."""

    def basis(X: torch.Tensor) -> torch.Tensor:
        U, S, _ = torch.linalg.svd(X, full_matrices=False)
        return U[:, : int((S > S[0] * max(X.shape) * torch.finfo(torch.float32).eps).sum())]

    U = basis(torch.cat([s * B.double() for B, _, s in factors], dim=1))
    V = basis(torch.cat([A.double().T for _, A, _ in factors], dim=1))
    cores = [U.T @ (s * B.double() @ A.double()) @ V for B, A, s in factors]
    return U @ merge(cores) @ V.T
