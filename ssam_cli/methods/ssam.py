"""SSAM (Singular Subspace Alignment and Merging), Algorithm 1 of the paper, computed the exact fast way.

Δ = λ Σ_i U_cU_cᵀ Δ_i V_cV_cᵀ = λ U_c (U_cᵀ S V_c) V_cᵀ with S = Σ Δ_i: the sum is projected once and the
result stays rank ≤ k, so it is returned factored and can be written as a LoRA adapter.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from pydantic import Field

from ssam_cli.consensus.bases import ConsensusBases, consensus_bases, cut_bases, project_sum
from ssam_cli.consensus.randomized import RandomizedSpectrum, randomized_spectra
from ssam_cli.deltas import Delta, LowRankDelta, all_lowrank, frobenius_norm, weighted_sum
from ssam_cli.methods.base import (AUTO, AutoScaledParams, MergeContext, MergeResult, MethodSpec, PositiveRank,
                                   auto_lambda, resolve_lambda)


# Dense weights with min(d_out, d_in) from here on get randomized consensus bases: measured crossover against the
# exact path (one thread, n = 4, k = 128): 1024² 1.2×, 1024 × 2752 4.2×, 2048² 3.2× faster (docs/performance.md).
RANDOMIZED_FROM = 2048


class SsamParams(AutoScaledParams):
    """k, the consensus subspace rank (paper: 128), λ (paper: 1/n; or auto), and `exact` to refuse the randomized
    bases."""

    mean_by_default: ClassVar[bool] = True  # the paper's λ = 1/n
    rank: PositiveRank = 128
    exact: bool = Field(default=False, description="dense updates: exact consensus bases even for large weights "
                                                    "(slow; by default weights ≥ 2048 on both sides are sketched)")


def merge(deltas: Sequence[Delta], weights: Sequence[float], params: SsamParams, ctx: MergeContext) -> MergeResult:
    weighted = [d.scaled(w) for d, w in zip(deltas, weights)]
    bases, route = _bases(weighted, params, ctx)
    U, V = bases.U, bases.V
    if bases.factored:  # U_cᵀSV_c and ‖S‖_F from the factors' R × R Grams: no d-sized product
        C, norm_sum = bases.projected_sum(), bases.sum_norm()
    else:
        C = project_sum(weighted, U, V)
        norm_sum = frobenius_norm(weighted_sum(weighted, [1.0] * len(weighted)))
    norm_projected = float(torch.linalg.vector_norm(C.double()))  # ‖ΣPΔ_i‖_F = ‖C‖_F (U_c, V_c orthonormal)
    if params.lam == AUTO:  # P the consensus projection
        lam = auto_lambda(norm_sum, norm_projected, len(weighted))
    else:
        lam = resolve_lambda(params, ctx.n_specialists)
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
        "bases": route,
        **_sketch_stats(bases),
        "norm_sum": norm_sum,
        "norm_merged": abs(lam) * norm_projected,
    }
    return MergeResult(merged, stats, bases if route == "factored" else None)


def _bases(weighted: Sequence[Delta], params: SsamParams, ctx: MergeContext) -> tuple[ConsensusBases, str]:
    """Consensus bases by the cheapest route that keeps them accurate: factored for LoRA inputs (exact),
    randomized for large dense weights unless `exact`, else the exact dense decomposition."""
    if all_lowrank(list(weighted)):
        return consensus_bases(weighted, params.rank), "factored"
    if params.exact or min(weighted[0].shape) < RANDOMIZED_FROM:
        return consensus_bases(weighted, params.rank), "exact"
    generator = ctx.generator or torch.Generator(device=ctx.device).manual_seed(0)
    left, right = randomized_spectra([d.dense() for d in weighted], params.rank, generator)
    sketched = isinstance(left, RandomizedSpectrum) and isinstance(right, RandomizedSpectrum)
    return cut_bases(left, right, params.rank), "randomized" if sketched else "exact"


def _sketch_stats(bases: ConsensusBases) -> dict[str, Any]:
    """For randomized bases: the estimated sin θ to the exact k-subspaces and the sketch's shape (manifest)."""
    left, right = bases.left, bases.right
    if not (isinstance(left, RandomizedSpectrum) and isinstance(right, RandomizedSpectrum)):
        return {}  # exact bases: no estimate to report
    return {"subspace_error": [left.subspace_error, right.subspace_error],
            "sketch": {"width": [left.width, right.width], "depth": [left.depth, right.depth]}}


SPEC = MethodSpec(
    name="ssam",
    summary="project every language vector onto the top-k shared singular subspaces, then sum × λ",
    paper="SSAM: Singular Subspace Alignment and Merging (Algorithm 1)",
    paper_url="https://arxiv.org/abs/2603.21584",
    params=SsamParams,
    merge=merge,
    lowrank_output=True,
    spaces=("dense", "core"),
    exact_on_factors=True,
)
