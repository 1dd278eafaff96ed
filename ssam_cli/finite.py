"""The one finiteness rule: no inf/nan enters or leaves a merge unnoticed."""

from __future__ import annotations

import torch

from ssam_cli.errors import UserError


def require_finite(tensor: torch.Tensor, message: str) -> torch.Tensor:
    """tensor itself when every value is finite (non-floating tensors always are), else UserError(message)."""
    if tensor.dtype.is_floating_point and not bool(torch.isfinite(tensor).all()):
        raise UserError(message)
    return tensor


def merged_finite(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """A merged output tensor, checked finite, with the message that points at the inputs and λ."""
    return require_finite(tensor, f"{name}: the merged tensor has non-finite values (inf/nan); check the inputs and λ")
