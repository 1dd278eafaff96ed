"""DARE (Yu et al., ICML 2024): drop each entry of every Δ_i with probability p, rescale by 1/(1−p).

`dare_linear` sums the rescaled updates (× λ); `dare_ties` feeds them to TIES' sign election and disjoint
mean (optionally after a TIES magnitude trim, off by default as in PEFT and mergekit; per tensor, or with
`trim: global` over every merged weight's rescaled entries, see global_trim.py). The masks come from
ctx.generator, which the engine seeds from the recipe seed and the tensor name: reruns are bit-identical.
"""

from __future__ import annotations

from typing import Sequence

import torch
from pydantic import Field

from ssam_cli.deltas import Delta, DenseDelta, frobenius_norm
from ssam_cli.methods.base import MergeContext, MergeResult, MethodSpec, ScaledParams, resolve_lambda
from ssam_cli.methods.global_trim import Trim, global_trim_prepass, trimmed_ties


class DareParams(ScaledParams):
    """p: drop probability (default 0.2); λ default 1."""

    p: float = Field(default=0.2, ge=0.0, lt=1.0, description="probability of dropping each entry")


class DareTiesParams(DareParams):
    """p as DARE; density: TIES magnitude trim after the drop (1.0: no trim, as PEFT and mergekit)."""

    density: float = Field(default=1.0, gt=0.0, le=1.0, description="fraction kept by TIES' trim after the drop")
    trim: Trim = Field(default="per_tensor", description="per_tensor, or global: one threshold over all merged weights")


def drop_and_rescale(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """m ⊙ x / (1 − p) with m_j ~ Bernoulli(1 − p), drawn from `generator`."""
    if p == 0.0:
        return x
    keep = torch.bernoulli(torch.full_like(x, 1.0 - p), generator=generator)
    return x * keep / (1.0 - p)


def _dropped(deltas: Sequence[Delta], p: float, ctx: MergeContext) -> list[torch.Tensor]:
    """One mask per specialist, in specialist order, from the one per-tensor generator."""
    return [drop_and_rescale(d.dense(), p, ctx.generator) for d in deltas]


def merge_linear(deltas: Sequence[Delta], weights: Sequence[float], params: DareParams,
                 ctx: MergeContext) -> MergeResult:
    lam = resolve_lambda(params, ctx.n_specialists)
    total = sum(x * w for x, w in zip(_dropped(deltas, params.p, ctx), weights))
    merged = DenseDelta(total * lam)
    return MergeResult(merged, {"lambda": lam, "p": params.p, "norm_merged": frobenius_norm(merged)})


def merge_ties(deltas: Sequence[Delta], weights: Sequence[float], params: DareTiesParams,
               ctx: MergeContext) -> MergeResult:
    lam = resolve_lambda(params, ctx.n_specialists)
    out, trim_stats = trimmed_ties(_dropped(deltas, params.p, ctx), weights, params.density, params.trim, ctx)
    merged = DenseDelta(out * lam)
    stats = {"lambda": lam, "p": params.p, "density": params.density, **trim_stats,
             "norm_merged": frobenius_norm(merged)}
    return MergeResult(merged, stats)


LINEAR_SPEC = MethodSpec(
    name="dare_linear",
    summary="drop entries with probability p, rescale 1/(1−p), sum, × λ (seeded)",
    paper="Language Models are Super Mario: DARE (Yu et al., ICML 2024)",
    paper_url="https://arxiv.org/abs/2311.03099",
    params=DareParams,
    merge=merge_linear,
)

TIES_SPEC = MethodSpec(
    name="dare_ties",
    summary="DARE drop-and-rescale, then TIES sign election and disjoint mean, × λ (seeded)",
    paper="Language Models are Super Mario: DARE (Yu et al., ICML 2024) + TIES-Merging",
    paper_url="https://arxiv.org/abs/2311.03099",
    params=DareTiesParams,
    merge=merge_ties,
    prepass=global_trim_prepass(lambda deltas, params, ctx: _dropped(deltas, params.p, ctx)),
)
