"""Iso-C and Iso-CTS (Marczak et al., ICML 2025, "No Task Left Behind"): isotropic spectra, × λ.

Iso-C: Δ = λ σ̄ U Vᵀ from the SVD U Σ Vᵀ of S = Σ_i Δ_i, σ̄ the mean of all min(d_out, d_in) singular
values. On low-rank (LoRA) updates the sum has rank R ≪ min(d): the zeros pull σ̄ down by R/min(d) and the
flat spectrum spreads that mass over arbitrary null-space directions — the collapse the MLLM merging
benchmark reports. `nonzero_only: true` flattens only the R non-zero singular values (returned factored).
Iso-CTS: the top ⌊fraction·min(d)⌋ directions of S (common subspace) plus, per task, the top directions of
Δ_i with the common left subspace projected out; both bases are orthogonalised (polar factor) and the
concatenated spectrum flattened to its mean.
"""

from __future__ import annotations

from typing import Sequence

import torch
from pydantic import Field

from ssam_cli.deltas import Delta, DenseDelta, LowRankDelta, frobenius_norm, weighted_sum
from ssam_cli.methods.base import MergeContext, MergeResult, MethodSpec, ScaledParams, resolve_lambda
from ssam_cli.spectra import polar_factor, thin_svd


class IsoCParams(ScaledParams):
    """λ (default 1; the paper tunes it on validation data); nonzero_only: flatten only σ > 0 (LoRA fix)."""

    nonzero_only: bool = Field(default=False, description="flatten only the non-zero singular values")


class IsoCtsParams(ScaledParams):
    """λ (default 1, tuned in the paper); common_fraction: share of min(d) given to the common subspace."""

    common_fraction: float = Field(default=0.8, ge=0.0, le=1.0, description="common subspace share of min(d)")


def merge_c(deltas: Sequence[Delta], weights: Sequence[float], params: IsoCParams, ctx: MergeContext) -> MergeResult:
    lam = resolve_lambda(params, ctx.n_specialists)
    total = weighted_sum(deltas, weights)
    shape = total.shape
    if params.nonzero_only:
        svd = thin_svd(total).nonzero(shape)
        sigma = float(svd.S.mean()) if svd.S.numel() else 0.0
        merged: Delta = LowRankDelta(svd.U * (sigma * lam), svd.Vh) if svd.S.numel() \
            else LowRankDelta.zero(shape, svd.U.dtype, svd.U.device)
        flattened = int(svd.S.numel())
    else:
        U, S, Vh = torch.linalg.svd(total.dense(), full_matrices=False)
        sigma = float(S.mean())
        merged = DenseDelta((U * (sigma * lam)) @ Vh)
        flattened = int(S.numel())
    stats = {"lambda": lam, "sigma_mean": sigma, "directions": flattened, "nonzero_only": params.nonzero_only,
             "norm_sum": frobenius_norm(total), "norm_merged": frobenius_norm(merged)}
    return MergeResult(merged, stats)


def subspace_sizes(r: int, n: int, fraction: float) -> tuple[int, int]:
    """(common k, per-task s) with k + n·s = r when possible: the task part is a multiple of n."""
    s = round((r - int(r * fraction)) / n)
    if n * s > r:
        s = r // n
    return r - n * s, s


def merge_cts(deltas: Sequence[Delta], weights: Sequence[float], params: IsoCtsParams,
              ctx: MergeContext) -> MergeResult:
    lam = resolve_lambda(params, ctx.n_specialists)
    tasks = [d.scaled(w).dense() for d, w in zip(deltas, weights)]
    total = sum(tasks[1:], tasks[0].clone())
    k, s = subspace_sizes(min(total.shape), len(tasks), params.common_fraction)
    U, S, Vh = torch.linalg.svd(total, full_matrices=False)
    Us, Ss, Vhs = [U[:, :k]], [S[:k]], [Vh[:k]]
    for t in tasks if s > 0 else []:
        residual = t - U[:, :k] @ (U[:, :k].T @ t)
        u, sv, vh = torch.linalg.svd(residual, full_matrices=False)
        Us.append(u[:, :s])
        Ss.append(sv[:s])
        Vhs.append(vh[:s])
    sigma = float(torch.cat(Ss).mean())
    merged = DenseDelta((polar_factor(torch.cat(Us, dim=1)) * (sigma * lam)) @ polar_factor(torch.cat(Vhs)))
    stats = {"lambda": lam, "sigma_mean": sigma, "common_rank": k, "task_rank": s,
             "norm_sum": frobenius_norm(DenseDelta(total)), "norm_merged": frobenius_norm(merged)}
    return MergeResult(merged, stats)


C_SPEC = MethodSpec(
    name="iso_c",
    summary="SVD of the summed task vectors with every singular value set to their mean, × λ",
    paper="No Task Left Behind: Isotropic Model Merging with Common and Task-Specific Subspaces (ICML 2025), Iso-C",
    paper_url="https://arxiv.org/abs/2502.04959",
    params=IsoCParams,
    merge=merge_c,
    lowrank_when=lambda params: params.nonzero_only,
)

CTS_SPEC = MethodSpec(
    name="iso_cts",
    summary="common subspace of the sum + task-specific residual directions, orthogonalised, isotropic, × λ",
    paper="No Task Left Behind: Isotropic Model Merging with Common and Task-Specific Subspaces (ICML 2025), Iso-CTS",
    paper_url="https://arxiv.org/abs/2502.04959",
    params=IsoCtsParams,
    merge=merge_cts,
)
