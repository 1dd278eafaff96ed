"""SSAM (Singular Subspace Alignment and Merging), Algorithm 1 of the paper, computed the exact fast way.

Δ = λ Σ_i U_cU_cᵀ Δ_i V_cV_cᵀ = λ U_c (U_cᵀ S V_c) V_cᵀ with S = Σ Δ_i: the sum is projected once and the
result stays rank ≤ k, so it is returned factored and can be written as a LoRA adapter.
"""

from __future__ import annotations

from typing import Sequence

from ssam_cli.deltas import Delta, LowRankDelta, frobenius_norm
from ssam_cli.linalg import consensus_bases, project_sum, weighted_sum
from ssam_cli.methods.base import MergeContext, MergeResult, MethodSpec, PositiveRank, ScaledParams, resolve_lambda


class SsamParams(ScaledParams):
    """k, the consensus subspace rank (paper: 128), and λ (paper: 1/n)."""

    rank: PositiveRank = 128


def merge(deltas: Sequence[Delta], weights: Sequence[float], params: SsamParams, ctx: MergeContext) -> MergeResult:
    lam = resolve_lambda(params.lam, ctx.n_specialists, default_is_mean=True)
    weighted = [d.scaled(w) for d, w in zip(deltas, weights)]
    bases = consensus_bases(weighted, params.rank)
    U, V = bases.U, bases.V
    C = project_sum(weighted, U, V)
    if V.shape[1] <= U.shape[1]:
        merged = LowRankDelta((U @ C) * lam, V.T.contiguous())
    else:
        merged = LowRankDelta(U * lam, (C @ V.T).contiguous())
    k_used = min(U.shape[1], V.shape[1])
    stats = {
        "lambda": lam,
        "rank_requested": params.rank,
        "rank_used": k_used,
        "rank_capped": bases.capped,
        "numerical_rank": [bases.left.numerical_rank, bases.right.numerical_rank],
        "energy_left": bases.left.energy(U.shape[1]),
        "energy_right": bases.right.energy(V.shape[1]),
        "norm_sum": frobenius_norm(weighted_sum(weighted, [1.0] * len(weighted))),
        "norm_merged": frobenius_norm(merged),
    }
    return MergeResult(merged, stats)


SPEC = MethodSpec(
    name="ssam",
    summary="project every language vector onto the top-k shared singular subspaces, then sum × λ",
    paper="SSAM: Singular Subspace Alignment and Merging (Algorithm 1)",
    params=SsamParams,
    merge=merge,
    lowrank_output=True,
    spaces=("dense", "core"),
    exact_on_factors=True,
)
