"""TIES-Merging (Yadav et al., NeurIPS 2023): trim, elect sign, disjoint merge, × λ.

Each Δ_i keeps its top `density` fraction of entries by magnitude (per tensor, or with `trim: global` over
every merged weight: see global_trim.py); the sign of each entry is
elected as sgn(Σ_i trimmed Δ_i); the merged entry is the mean of the trimmed values that agree with it.
Element-wise, so LoRA updates are densified; the result is a dense update.
"""

from __future__ import annotations

from typing import Sequence

from pydantic import Field

from ssam_cli.deltas import Delta, DenseDelta, frobenius_norm
from ssam_cli.methods.base import MergeContext, MergeResult, MethodSpec, ScaledParams, resolve_lambda
from ssam_cli.methods.global_trim import Trim, global_trim_prepass, trimmed_ties


class TiesParams(ScaledParams):
    """density: fraction of entries each task keeps (issue/TIES default 0.2 here); λ default 1."""

    density: float = Field(default=0.2, gt=0.0, le=1.0, description="fraction of largest-magnitude entries kept")
    trim: Trim = Field(default="per_tensor", description="per_tensor, or global: one threshold over all merged weights")


def merge(deltas: Sequence[Delta], weights: Sequence[float], params: TiesParams, ctx: MergeContext) -> MergeResult:
    lam = resolve_lambda(params, ctx.n_specialists)
    out, trim_stats = trimmed_ties([d.dense() for d in deltas], weights, params.density, params.trim, ctx)
    merged = DenseDelta(out * lam)
    stats = {"lambda": lam, "density": params.density, **trim_stats, "norm_merged": frobenius_norm(merged)}
    return MergeResult(merged, stats)


SPEC = MethodSpec(
    name="ties",
    summary="trim each task vector to its top-density magnitudes, elect signs, disjoint mean, × λ",
    paper="TIES-Merging: Resolving Interference When Merging Models (Yadav et al., NeurIPS 2023)",
    paper_url="https://arxiv.org/abs/2306.01708",
    params=TiesParams,
    merge=merge,
    prepass=global_trim_prepass(lambda deltas, params, ctx: [d.dense() for d in deltas]),
)
