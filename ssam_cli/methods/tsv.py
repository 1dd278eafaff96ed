"""TSV-Merge (Task Singular Vectors, Gargiulo et al., CVPR 2025), × λ.

Per task the rank-k truncated SVD, k = ⌊min(d_out, d_in)/n⌋; the left (and right) singular vectors of all
tasks are concatenated and replaced by their orthogonal polar factor, which decorrelates the tasks:
Δ = U⊥ diag(Σ) V⊥ᵀ. The result is returned factored (rank n·k), so it can be written as a LoRA adapter.
Two documented choices where the paper's recipe is undefined: k is at least 1 when n > min(d_out, d_in),
and a task keeps only its numerically non-zero components (a LoRA of rank r < k contributes r), because
singular vectors of zero singular values are arbitrary and would still change the polar factor.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ssam_cli.deltas import Delta, LowRankDelta, frobenius_norm
from ssam_cli.methods.base import MergeContext, MergeResult, MethodSpec, ScaledParams, resolve_lambda
from ssam_cli.spectra import polar_factor, thin_svd


class TsvParams(ScaledParams):
    """λ, the scale of the merged update (paper default 1)."""


def merge(deltas: Sequence[Delta], weights: Sequence[float], params: TsvParams, ctx: MergeContext) -> MergeResult:
    lam = resolve_lambda(params, ctx.n_specialists)
    shape = deltas[0].shape
    k = max(1, min(shape) // len(deltas))
    parts = [thin_svd(d.scaled(w)) for d, w in zip(deltas, weights)]
    parts = [p.nonzero(shape).top(k) for p in parts]
    U = torch.cat([p.U for p in parts], dim=1)
    S = torch.cat([p.S for p in parts])
    Vh = torch.cat([p.Vh for p in parts], dim=0)
    if S.numel() == 0:
        merged = LowRankDelta.zero(shape, U.dtype, U.device)
    else:
        merged = LowRankDelta(polar_factor(U) * (S * lam), polar_factor(Vh))
    stats = {"lambda": lam, "rank_per_task": k, "ranks_kept": [int(p.S.numel()) for p in parts],
             "rank_merged": int(S.numel()), "norm_merged": frobenius_norm(merged)}
    return MergeResult(merged, stats)


SPEC = MethodSpec(
    name="tsv",
    summary="per-task rank-⌊min/n⌋ SVD, concatenated singular vectors orthogonalised (polar factor), × λ",
    paper="Task Singular Vectors: Reducing Task Interference in Model Merging (Gargiulo et al., CVPR 2025), TSV-M",
    paper_url="https://arxiv.org/abs/2412.00081",
    params=TsvParams,
    merge=merge,
    lowrank_output=True,
)
