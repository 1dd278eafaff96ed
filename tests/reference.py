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
