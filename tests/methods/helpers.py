"""Small inputs shared by the method tests: random dense and LoRA updates, a context, a runner."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from ssam_cli.deltas import Delta, DenseDelta, LowRankDelta
from ssam_cli.methods.base import MergeContext, MergeResult, MethodSpec


def dense_deltas(shape: tuple[int, int], n: int, seed: int) -> list[DenseDelta]:
    g = torch.Generator().manual_seed(seed)
    return [DenseDelta(torch.randn(*shape, generator=g)) for _ in range(n)]


def lora_deltas(shape: tuple[int, int], n: int, r: int, seed: int, scale: float = 2.0) -> list[LowRankDelta]:
    g = torch.Generator().manual_seed(seed)
    return [LowRankDelta(torch.randn(shape[0], r, generator=g), torch.randn(r, shape[1], generator=g), scale)
            for _ in range(n)]


def ctx(n: int, seed: Optional[int] = None) -> MergeContext:
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return MergeContext("w", n, torch.device("cpu"), gen)


def run(spec: MethodSpec, deltas: Sequence[Delta], params: Optional[dict[str, Any]] = None,
        weights: Optional[Sequence[float]] = None, seed: Optional[int] = None) -> MergeResult:
    n = len(deltas)
    return spec.merge(deltas, list(weights or [1.0] * n), spec.params.model_validate(params or {}), ctx(n, seed))
