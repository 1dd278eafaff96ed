"""Task arithmetic (Ilharco et al., 2023): W_0 + λ Σ Δ_i. Stays factored for LoRA inputs (rank Σ r_i)."""

from __future__ import annotations

from typing import Sequence

from ssam_cli.deltas import Delta, frobenius_norm, weighted_sum
from ssam_cli.methods.base import AUTO, AutoScaledParams, MergeContext, MergeResult, MethodSpec, auto_lambda, resolve_lambda


class TaskArithmeticParams(AutoScaledParams):
    """λ, the scale of the summed task vectors (default 1; or auto)."""


def merge(deltas: Sequence[Delta], weights: Sequence[float], params: TaskArithmeticParams, ctx: MergeContext) -> MergeResult:
    if params.lam == AUTO:  # P = identity: both norms of the rule are ‖Σ w_iΔ_i‖, whose value cancels (λ = 1/n)
        lam = auto_lambda(1.0, 1.0, ctx.n_specialists)
    else:
        lam = resolve_lambda(params, ctx.n_specialists)
    merged = weighted_sum(deltas, [w * lam for w in weights])
    return MergeResult(merged, {"lambda": lam, "norm_merged": frobenius_norm(merged)})


SPEC = MethodSpec(
    name="task_arithmetic",
    summary="sum of the task vectors, × λ",
    paper="Editing Models with Task Arithmetic (Ilharco et al., ICLR 2023)",
    paper_url="https://arxiv.org/abs/2212.04089",
    params=TaskArithmeticParams,
    merge=merge,
    lowrank_output=True,
    exact_on_factors=True,
)
