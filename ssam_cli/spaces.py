"""Where a method merges LoRA specialists: the full update, the factors, or the Core Space.

- dense: the method sees ΔW_i = s_i·B_i·A_i — the definitions of the papers. Deltas are passed as
  LowRankDelta, which represents exactly that matrix; methods densify only when they must.
- factor: lora_A and lora_B are merged separately, each as a set of updates from zero, as MLLMerging's
  modality-merge code does; result s·B_m·A_m. Needs equal ranks. When all specialists share one scale s
  the raw factors are merged and s kept (MLLMerging exactly); otherwise s_i is folded into B_i first and
  the result has scale 1. λ of a method applies to both factors, so the product scales by λ².
- core: Core Space merging (Panariello et al., NeurIPS 2025). With U_B an orthonormal basis of the
  stacked [s_1B_1 | … | s_nB_n] and V_A of the stacked [A_1ᵀ | … | A_nᵀ], every update is exactly
  U_B M_i V_Aᵀ with the small core M_i = (U_BᵀB_i s_i)(A_iV_A) (R × R, R ≤ Σr_i). The method merges the
  cores (handed over as low-rank cores, so methods still see LoRA updates) and the result is mapped back:
  lossless, cheap, and always low-rank (rank ≤ R), so it can be written as a LoRA adapter.
A weight that some specialist changed in full has no factors: it is merged in the dense space, and the
stats say so. `space` in the stats always names the space that ran.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ssam_cli.deltas import Delta, DenseDelta, LowRankDelta, all_lowrank
from ssam_cli.errors import UserError
from ssam_cli.spectra import left_singular
from ssam_cli.methods.base import MergeContext, MergeResult, MethodSpec
from ssam_cli.recipe import Space



def produces_lowrank(spec: MethodSpec, space: str, params: Any = None) -> bool:
    """Whether LoRA inputs merged this way give a LowRankDelta (writable as `format: lora`)."""
    if space in ("factor", "core"):
        return True
    if spec.lowrank_when is not None and params is not None:
        return spec.lowrank_when(params)
    return spec.lowrank_output


def merge_in_space(spec: MethodSpec, deltas: Sequence[Delta], weights: Sequence[float], params: Any,
                   ctx: MergeContext, space: Space) -> MergeResult:
    """Run `spec` on one weight in the chosen space; stats["space"] records the space that ran."""
    if space not in spec.spaces:
        raise UserError(f"space: {space}: method {spec.name} supports only {', '.join(spec.spaces)}")
    if not all_lowrank(list(deltas)):
        result = spec.merge(deltas, weights, params, ctx)
        note = {} if space == "dense" else {"space_note": f"space {space} needs LoRA inputs; a full update ran dense"}
        return _with(result, "dense", note)
    lowrank = [d for d in deltas if isinstance(d, LowRankDelta)]
    if space == "dense" or (space == "core" and spec.exact_on_factors):
        return _with(spec.merge(deltas, weights, params, ctx), space, {})
    if space == "factor":
        return _merge_factors(spec, lowrank, weights, params, ctx)
    return _merge_cores(spec, lowrank, weights, params, ctx)


def _with(result: MergeResult, space: str, extra: dict[str, Any]) -> MergeResult:
    return MergeResult(result.delta, {"space": space, **extra, **result.stats}, result.bases)


def _merge_factors(spec: MethodSpec, deltas: list[LowRankDelta], weights: Sequence[float], params: Any,
                   ctx: MergeContext) -> MergeResult:
    ranks = sorted({d.rank for d in deltas if d.rank > 0})
    if len(ranks) > 1:
        raise UserError(f"{ctx.name}: space: factor needs one LoRA rank across specialists, got ranks "
                        f"{[d.rank for d in deltas]}; use space: dense or core")
    if not ranks:
        return MergeResult(LowRankDelta.zero(deltas[0].shape, deltas[0].B.dtype, deltas[0].B.device),
                           {"space": "factor", "rank": 0})
    r = ranks[0]
    scales = {d.scale for d in deltas if d.rank > 0}
    shared = scales.pop() if len(scales) == 1 else None
    As, Bs = [], []
    for d in deltas:
        if d.rank == 0:
            As.append(DenseDelta(d.A.new_zeros(r, d.shape[1])))
            Bs.append(DenseDelta(d.B.new_zeros(d.shape[0], r)))
        else:
            As.append(DenseDelta(d.A))
            Bs.append(DenseDelta(d.B if shared is not None else d.B * d.scale))
    res_a = spec.merge(As, weights, params, ctx)
    res_b = spec.merge(Bs, weights, params, ctx)
    merged = LowRankDelta(res_b.delta.dense(), res_a.delta.dense(), shared if shared is not None else 1.0)
    stats = {"space": "factor", "rank": r, "scale": "shared" if shared is not None else "folded into lora_B",
             "lora_A": res_a.stats, "lora_B": res_b.stats}
    return MergeResult(merged, stats)


def _basis(blocks: list[torch.Tensor], rows: int) -> torch.Tensor:
    """An orthonormal basis (columns) of the span of the blocks' columns, cut at its numerical rank."""
    if not blocks:
        return torch.zeros(rows, 0)
    spectrum = left_singular(torch.cat(blocks, dim=1))
    return spectrum.vectors[:, : spectrum.numerical_rank]


def _merge_cores(spec: MethodSpec, deltas: list[LowRankDelta], weights: Sequence[float], params: Any,
                 ctx: MergeContext) -> MergeResult:
    d_out, d_in = deltas[0].shape
    live = [d for d in deltas if d.rank > 0 and d.scale != 0.0]
    U = _basis([d.B * d.scale for d in live], d_out).to(deltas[0].B)
    V = _basis([d.A.T for d in live], d_in).to(deltas[0].A)
    if U.shape[1] == 0 or V.shape[1] == 0:
        zero = LowRankDelta.zero((d_out, d_in), deltas[0].B.dtype, deltas[0].B.device)
        return MergeResult(zero, {"space": "core", "core_shape": [U.shape[1], V.shape[1]]})
    cores: list[Delta] = [LowRankDelta(U.T @ d.B, d.A @ V, d.scale) for d in deltas]
    result = spec.merge(cores, weights, params, ctx)
    m = result.delta
    if isinstance(m, LowRankDelta):
        merged = LowRankDelta(U @ m.B, m.A @ V.T, m.scale)
    else:
        merged = LowRankDelta(U @ m.dense(), V.T.contiguous())
    return MergeResult(merged, {"space": "core", "core_shape": [U.shape[1], V.shape[1]], **result.stats})
