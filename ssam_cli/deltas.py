"""The one currency between sources, methods and writers: a weight update, dense or low-rank.

Low-rank updates stay factored (B, A, scale) so that methods able to work on factors never build a
d_out x d_in matrix; `dense()` is there for the methods that need it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch


@dataclass(frozen=True)
class DenseDelta:
    """Δ = W_i − W_0 as a full matrix (or any-shaped tensor)."""

    tensor: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    def dense(self) -> torch.Tensor:
        return self.tensor

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "DenseDelta":
        return DenseDelta(self.tensor.to(device=device, dtype=dtype))

    def scaled(self, factor: float) -> "DenseDelta":
        return DenseDelta(self.tensor * factor)


@dataclass(frozen=True)
class LowRankDelta:
    """Δ = scale · B @ A with B: d_out × r and A: r × d_in (r may be 0: an exact zero update)."""

    B: torch.Tensor
    A: torch.Tensor
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.B.ndim != 2 or self.A.ndim != 2 or self.B.shape[1] != self.A.shape[0]:
            raise ValueError(f"LoRA factors do not chain: B {tuple(self.B.shape)}, A {tuple(self.A.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.B.shape[0], self.A.shape[1])

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def dense(self) -> torch.Tensor:
        return (self.B @ self.A) * self.scale

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "LowRankDelta":
        return LowRankDelta(self.B.to(device=device, dtype=dtype), self.A.to(device=device, dtype=dtype), self.scale)

    def scaled(self, factor: float) -> "LowRankDelta":
        return LowRankDelta(self.B, self.A, self.scale * factor)

    @staticmethod
    def zero(shape: tuple[int, int], dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> "LowRankDelta":
        """A rank-0 update: the exact zero, for a specialist that did not touch a weight."""
        return LowRankDelta(torch.zeros(shape[0], 0, dtype=dtype, device=device),
                            torch.zeros(0, shape[1], dtype=dtype, device=device))


Delta = Union[DenseDelta, LowRankDelta]


def all_lowrank(deltas: list[Delta]) -> bool:
    return all(isinstance(d, LowRankDelta) for d in deltas)


def frobenius_norm(delta: Delta) -> float:
    """‖Δ‖_F without densifying a low-rank delta (through the r × r Gram products of its factors)."""
    if isinstance(delta, DenseDelta):
        return float(torch.linalg.vector_norm(delta.tensor.double()))
    B, A = delta.B.double(), delta.A.double()
    sq = torch.sum((B.T @ B) * (A @ A.T)) * delta.scale**2
    return float(sq.clamp_min(0).sqrt())


def weighted_sum(deltas: Sequence[Delta], weights: Sequence[float]) -> Delta:
    """Σ w_i Δ_i, kept factored (stacked factors, exact) when every delta is low-rank."""
    if all_lowrank(list(deltas)):
        Bs = [d.B * (w * d.scale) for d, w in zip(deltas, weights)]  # type: ignore[union-attr]
        As = [d.A for d in deltas]  # type: ignore[union-attr]
        return LowRankDelta(torch.cat(Bs, dim=1), torch.cat(As, dim=0))
    total = None
    for d, w in zip(deltas, weights):
        term = d.dense() * w
        total = term if total is None else total + term
    return DenseDelta(total)
