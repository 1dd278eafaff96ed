"""WUDI merging (Cheng et al., ICML 2025): data-free per-layer optimisation of the merged update.

τ minimises Σ_i ‖(τ − Δ_i) Δ_iᵀ‖² / ‖Δ_i‖² — each task vector's rows stand in for that task's inputs —
starting from Σ_i Δ_i, with Adam (lr 1e-5) for 300 iterations, as the authors' code does. λ scales the
result (1: WUDI needs no rescaling). The loss at the start and the end goes in the manifest.
Cost per iteration: one d_out × d_in by d_in × d_in product (see ssam_cli/methods/interference.py).
"""

from __future__ import annotations

from typing import Sequence

import torch
from pydantic import Field

from ssam_cli.deltas import Delta, DenseDelta, LowRankDelta, frobenius_norm, weighted_sum
from ssam_cli.methods.base import MergeContext, MergeResult, MethodSpec, ScaledParams, resolve_lambda
from ssam_cli.methods.interference import Objective, Task, minimise


class WudiParams(ScaledParams):
    """Adam's learning rate and iteration count (paper: 1e-5, 300); λ default 1."""

    lr: float = Field(default=1e-5, gt=0.0, description="Adam learning rate")
    iterations: int = Field(default=300, ge=0, description="optimisation steps per weight")


def gram_root(delta: Delta) -> torch.Tensor:
    """X with XᵀX = ΔᵀΔ: s·R_B·A (r × d_in) for a LoRA update (B = Q_B R_B), Δ itself otherwise."""
    if isinstance(delta, LowRankDelta):
        _, Rb = torch.linalg.qr(delta.B)
        return (Rb @ delta.A) * delta.scale
    return delta.dense()


def merge(deltas: Sequence[Delta], weights: Sequence[float], params: WudiParams, ctx: MergeContext) -> MergeResult:
    lam = resolve_lambda(params, ctx.n_specialists)
    tasks_in = [d.scaled(w) for d, w in zip(deltas, weights)]
    shape = tasks_in[0].shape
    tasks = [Task(d, gram_root(d), frobenius_norm(d) ** 2) for d in tasks_in]
    init = weighted_sum(tasks_in, [1.0] * len(tasks_in)).dense()
    objective = Objective(tasks, shape, init)
    tau, trace = minimise(objective, init, optimizer="adam", lr=params.lr, iterations=params.iterations)
    merged = DenseDelta(tau * lam)
    stats = {"lambda": lam, "lr": params.lr, "iterations": params.iterations, "loss_start": trace.loss_start,
             "loss_end": trace.loss_end, "loss_curve": trace.curve, "norm_merged": frobenius_norm(merged)}
    return MergeResult(merged, stats)


SPEC = MethodSpec(
    name="wudi",
    summary="data-free optimisation: τ minimising Σ‖(τ−Δ_i)Δ_iᵀ‖²/‖Δ_i‖² from ΣΔ_i, Adam, × λ",
    paper="Whoever Started the Interference Should End It: WUDI Merging (Cheng et al., ICML 2025)",
    paper_url="https://arxiv.org/abs/2503.08099",
    params=WudiParams,
    merge=merge,
)
