"""Weight averaging (NaiveMC in ModelCompose): W_0 + Σ w_i Δ_i / Σ w_i."""

from __future__ import annotations

from typing import Sequence

from ssam_cli.deltas import Delta, frobenius_norm, weighted_sum
from ssam_cli.methods.base import MergeContext, MergeResult, MethodParams, MethodSpec


class AverageParams(MethodParams):
    """No parameters: the specialists' recipe weights set the mix."""


def merge(deltas: Sequence[Delta], weights: Sequence[float], params: AverageParams, ctx: MergeContext) -> MergeResult:
    total = sum(weights)
    merged = weighted_sum(deltas, [w / total for w in weights])
    return MergeResult(merged, {"norm_merged": frobenius_norm(merged)})


SPEC = MethodSpec(
    name="average",
    summary="weighted mean of the specialists (NaiveMC)",
    paper="Model Composition for Multimodal LLMs (Chen et al., ACL 2024), NaiveMC",
    paper_url="https://arxiv.org/abs/2402.12750",
    params=AverageParams,
    merge=merge,
    lowrank_output=True,
    exact_on_factors=True,
)
