"""TIES' three steps, shared by `ties` and `dare_ties`: trim, elect a sign per entry, disjoint mean.

Sign election follows the TIES paper: γ = sgn(Σ_i τ̂_i) with sgn(0) = 0, so an entry whose trimmed values
cancel exactly merges to 0 (PEFT breaks that tie towards +1; the two agree everywhere else).
"""

from __future__ import annotations

from typing import Sequence

import torch


def trim_to_density(x: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ⌊density · numel⌋ entries of largest magnitude, zero the rest (TIES' trim step)."""
    k = int(density * x.numel())
    if k >= x.numel():
        return x
    flat = x.reshape(-1)
    kept = torch.zeros_like(flat)
    if k > 0:
        idx = torch.topk(flat.abs(), k, largest=True, sorted=False).indices
        kept[idx] = flat[idx]
    return kept.reshape(x.shape)


def elect_sign(stacked: torch.Tensor) -> torch.Tensor:
    """γ = sgn(Σ_i τ_i) per entry over dim 0 (the 'total mass' election), 0 where the sum is 0."""
    return torch.sign(stacked.sum(dim=0))


def disjoint_mean(stacked: torch.Tensor, weights: Sequence[float], sign: torch.Tensor) -> torch.Tensor:
    """Per entry, the mean of w_i τ_i over the tasks whose (non-zero) τ_i has the elected sign."""
    # A zero entry agrees only where γ = 0, and there every agreeing value is 0, so the mean is 0 anyway:
    # no separate non-zero mask (one full-size temporary fewer per task).
    agree = torch.sign(stacked) == sign
    w = torch.tensor(list(weights), dtype=stacked.dtype, device=stacked.device).reshape(-1, *[1] * sign.ndim)
    total = (stacked * w).mul_(agree).sum(dim=0)
    return total / agree.sum(dim=0).clamp_min(1).to(stacked.dtype)


def ties_merge(tensors: Sequence[torch.Tensor], weights: Sequence[float], density: float) -> torch.Tensor:
    """Trim each tensor to `density`, elect signs on the trimmed (unweighted) tensors, weighted disjoint mean."""
    stacked = torch.stack([trim_to_density(t, density) for t in tensors])
    return disjoint_mean(stacked, weights, elect_sign(stacked))
