"""OptMerge (Sec. 4 of the MLLM merging benchmark paper): WUDI's objective with low-rank targets.

k = max(1, ⌊min(d_out, d_in)/n⌋); τ̄ = mean of the task vectors; X_i = Σ_k V_kᵀ of Δ_i's rank-k SVD.
- `full` (full fine-tunes, Sec. 4.1): targets τ̄ + [Δ_i − τ̄]_k (rank-k truncation of the centred task
  vector); start at Σ Δ_i; Adam, lr 1e-5 — the authors' InternVL settings.
- `lora` (LoRA fine-tunes, Sec. 4.2): targets [Δ_i]_k (direct truncation, no centring); start at the mean
  τ̄; SGD with momentum 0.9, lr 1e-4 — the authors' Qwen2-VL settings.
Loss Σ_i ‖(τ − T_i) X_iᵀ‖² / ‖Δ_i‖², 300 iterations; λ (default 1) scales the result. `variant: auto` picks
`lora` when every input is a LoRA update and `full` otherwise; the variant that ran goes in the manifest.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

from pydantic import Field

from ssam_cli.deltas import Delta, DenseDelta, LowRankDelta, all_lowrank, frobenius_norm, weighted_sum
from ssam_cli.methods.base import MergeContext, MergeResult, MethodSpec, ScaledParams, resolve_lambda
from ssam_cli.methods.interference import Objective, Task, minimise
from ssam_cli.spectra import thin_svd

VARIANTS = {  # variant → (optimizer, default lr)
    "full": ("adam", 1e-5),
    "lora": ("sgd", 1e-4),
}


class OptMergeParams(ScaledParams):
    """variant (auto: lora iff all inputs are LoRA), lr (auto: 1e-5 Adam / 1e-4 SGD), iterations, momentum."""

    variant: Literal["auto", "full", "lora"] = "auto"
    lr: Optional[float] = Field(default=None, gt=0.0, description="learning rate (auto: per variant)")
    iterations: int = Field(default=300, ge=0, description="optimisation steps per weight")
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="SGD momentum (lora variant)")


def _truncated(delta: Delta, k: int, shape: tuple[int, int]) -> tuple[LowRankDelta, DenseDelta]:
    """([Δ]_k as factors, X = Σ_k V_kᵀ) from one exact thin SVD, keeping only non-zero components."""
    svd = thin_svd(delta).nonzero(shape).top(k)
    return LowRankDelta(svd.U * svd.S, svd.Vh), DenseDelta(svd.S[:, None] * svd.Vh)


def merge(deltas: Sequence[Delta], weights: Sequence[float], params: OptMergeParams,
          ctx: MergeContext) -> MergeResult:
    lam = resolve_lambda(params, ctx.n_specialists)
    variant = params.variant if params.variant != "auto" else ("lora" if all_lowrank(list(deltas)) else "full")
    optimizer, default_lr = VARIANTS[variant]
    lr = params.lr if params.lr is not None else default_lr
    vectors = [d.scaled(w) for d, w in zip(deltas, weights)]
    n, shape = len(vectors), vectors[0].shape
    k = max(1, min(shape) // n)
    mean = weighted_sum(vectors, [1.0 / n] * n).dense()
    tasks = []
    for v in vectors:
        low, inputs = _truncated(v, k, shape)
        if variant == "full":
            centred, _ = _truncated(DenseDelta(v.dense() - mean), k, shape)
            target: Delta = DenseDelta(mean + centred.dense())
        else:
            target = low
        tasks.append(Task(target, inputs.tensor, frobenius_norm(v) ** 2))
    init = mean * n if variant == "full" else mean
    tau, trace = minimise(Objective(tasks, shape, init), init, optimizer=optimizer, lr=lr,
                          iterations=params.iterations, momentum=params.momentum if optimizer == "sgd" else 0.0)
    merged = DenseDelta(tau * lam)
    stats = {"lambda": lam, "variant": variant, "optimizer": optimizer, "lr": lr, "rank": k,
             "iterations": params.iterations, "loss_start": trace.loss_start, "loss_end": trace.loss_end,
             "loss_curve": trace.curve, "norm_merged": frobenius_norm(merged)}
    return MergeResult(merged, stats)


SPEC = MethodSpec(
    name="optmerge",
    summary="WUDI-style optimisation towards rank-⌊min/n⌋ targets (centred for full FT; SGD + mean init for LoRA)",
    paper="Unifying Multimodal Large Language Model Capabilities and Modalities via Model Merging (OptMerge, Sec. 4)",
    paper_url="https://arxiv.org/abs/2505.19892",
    params=OptMergeParams,
    merge=merge,
)
