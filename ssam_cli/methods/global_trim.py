"""TIES' `trim: global`: one magnitude threshold per specialist over every merged weight, exact, in bounded memory.

Why: MLLMerging's modality line flattens each task vector over the whole model and keeps its top `density`
fraction by magnitude, so a specialist's small-update layers lose more than its large-update ones. The engine
streams one weight at a time and never holds a model, so the threshold — the ⌊density·N⌋-th largest |entry| of
a specialist over all N merged entries — is found by a radix select over float32 bit patterns (a non-negative
float32 orders like its bits read as an int32), in two streamed passes:

1. count every |entry| by its upper 16 bits (2^15 bins, the sign bit being 0): the bin holding the k-th largest
   value, and how many entries lie above it;
2. count only that bin's entries by their lower 16 bits (2^16 bins): the exact value.

Memory: per specialist two int64 histograms, (2^15 + 2^16) · 8 bytes = 768 KiB, whatever the model's size,
plus the weight in flight. Ties: every entry with |entry| ≥ the threshold is kept (MLLMerging's `>=` rule), so
equal magnitudes at the boundary keep a few more than ⌊density·N⌋; `kept` reports the exact count.
(MLLMerging's kthvalue index keeps ⌊density·N⌋ + 1 entries; we keep ⌊density·N⌋, as the per-tensor trim does.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import torch

from ssam_cli.deltas import Delta
from ssam_cli.errors import UserError
from ssam_cli.methods.base import MergeContext, Prepass, Sweep
from ssam_cli.methods.sign_consensus import ties_merge

Trim = Literal["per_tensor", "global"]
HIGH_BINS = 1 << 15
LOW_BINS = 1 << 16


@dataclass(frozen=True)
class GlobalThresholds:
    """Per specialist, the magnitude an entry needs to survive the trim (inf: none survives), and how many do."""

    density: float
    entries: int
    thresholds: list[float]
    kept: list[int]

    def manifest(self) -> dict[str, Any]:
        return {"trim": "global", "density": self.density, "entries": self.entries,
                "thresholds": [t if math.isfinite(t) else None for t in self.thresholds], "kept": self.kept}


def magnitude_bits(x: torch.Tensor) -> torch.Tensor:
    """|x| in float32 as int32 bit patterns, flattened: they order as the magnitudes do."""
    return x.detach().to(torch.float32).abs().reshape(-1).contiguous().view(torch.int32)


def _boundary(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """The bin holding the k-th largest (1-based) counted value, and how many values lie in higher bins."""
    from_top = hist.flip(0).cumsum(0)
    j = int(torch.searchsorted(from_top, torch.tensor(k, dtype=from_top.dtype)))
    b = hist.numel() - 1 - j
    return b, int(from_top[j]) - int(hist[b])


def global_thresholds(sweep: Sweep, density: float) -> GlobalThresholds:
    """The exact ⌊density·N⌋-th largest |entry| of each specialist over all the tensors two sweeps yield."""
    coarse: list[torch.Tensor] = []
    for tensors in sweep():
        coarse = coarse or [torch.zeros(HIGH_BINS, dtype=torch.int64) for _ in tensors]
        for h, t in zip(coarse, tensors):
            h += torch.bincount(magnitude_bits(t) >> 16, minlength=HIGH_BINS).cpu()
    entries = int(coarse[0].sum()) if coarse else 0
    k = int(density * entries)
    if k == 0:
        return GlobalThresholds(density, entries, [math.inf] * len(coarse), [0] * len(coarse))
    bins = [_boundary(h, k) for h in coarse]
    fine = [torch.zeros(LOW_BINS, dtype=torch.int64) for _ in coarse]
    for tensors in sweep():
        for h, t, (b, _) in zip(fine, tensors, bins):
            bits = magnitude_bits(t)
            h += torch.bincount(bits[(bits >> 16) == b] & 0xFFFF, minlength=LOW_BINS).cpu()
    thresholds, kept = [], []
    for h, (b, above) in zip(fine, bins):
        low, above_low = _boundary(h, k - above)
        pattern = torch.tensor([(b << 16) | low], dtype=torch.int32)
        thresholds.append(float(pattern.view(torch.float32)))
        kept.append(above + above_low + int(h[low]))
    return GlobalThresholds(density, entries, thresholds, kept)


def trim_at(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Zero the entries of x whose float32 magnitude is below the threshold."""
    return x * (x.to(torch.float32).abs() >= threshold)


def trimmed_ties(tensors: Sequence[torch.Tensor], weights: Sequence[float], density: float, trim: Trim,
                 ctx: MergeContext) -> tuple[torch.Tensor, dict[str, Any]]:
    """TIES on one weight with the recipe's trim, and the figures of the trim for the manifest."""
    if trim == "per_tensor":
        return ties_merge(tensors, weights, density), {"trim": trim}
    if not isinstance(ctx.prepass, GlobalThresholds):
        raise UserError(f"{ctx.name}: trim: global needs the thresholds of the engine's pre-pass over every merged "
                        "weight; run it through `ssam merge`")
    kept = [trim_at(t, th) for t, th in zip(tensors, ctx.prepass.thresholds)]
    fractions = [round(float((k != 0).sum()) / max(k.numel(), 1), 6) for k in kept]
    return ties_merge(kept, weights, 1.0), {"trim": trim, "kept_fraction": fractions}


def _run(params: Sequence[Any], sweep: Sweep) -> GlobalThresholds:
    densities = sorted({p.density for p in params})
    if len(densities) > 1:
        raise UserError(f"trim: global needs one density for every weight it trims together, got {densities} "
                        "(from modules.overrides); override trim: per_tensor for the modules with another density")
    return global_thresholds(sweep, densities[0])


def global_trim_prepass(inputs: Callable[[Sequence[Delta], Any, MergeContext], Sequence[torch.Tensor]]) -> Prepass:
    """The pre-pass of a TIES-like method whose params have `trim` and `density`; `inputs` are what it trims."""
    return Prepass(wanted=lambda params: params.trim == "global", inputs=inputs, run=_run)
