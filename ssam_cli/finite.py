"""The one finiteness rule: no inf/nan enters or leaves a merge unnoticed."""

from __future__ import annotations

import math

import torch

from ssam_cli.errors import UserError


def require_finite(tensor: torch.Tensor, message: str) -> torch.Tensor:
    """tensor itself when every value is finite (non-floating tensors always are), else UserError(message).

    A finite sum proves every value finite and costs a 25th of isfinite(·).all() (11008 × 4096, one thread); only a
    non-finite sum, which an overflow of finite values can also give, is looked at value by value."""
    if not tensor.dtype.is_floating_point or math.isfinite(float(tensor.sum())):
        return tensor
    if not bool(torch.isfinite(tensor).all()):
        raise UserError(message)
    return tensor


def merged_finite(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """A merged output tensor, checked finite, with the message that points at the inputs and λ."""
    return require_finite(tensor, f"{name}: the merged tensor has non-finite values (inf/nan); check the inputs and λ")
