"""Where a merge runs: the one rule for device strings (auto | cpu | cuda | cuda:N) and the choice of device."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DEVICE_HELP = "auto, cpu, cuda or cuda:N"


def check_device(spec: str) -> str:
    """`spec` if it is a device string ssam accepts, else ValueError (the recipe and every --device use this)."""
    if not DEVICE_PATTERN.match(spec):
        raise ValueError(f"must be {DEVICE_HELP}, got {spec!r}")
    return spec


def pick_device(spec: str) -> "torch.device":
    """`auto` is CUDA when there is one, else the CPU; an explicit CUDA request without CUDA is an error."""
    import torch

    from ssam_cli.errors import UserError

    try:
        check_device(spec)
    except ValueError as e:
        raise UserError(f"device: {e}") from None
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device: {spec} requested but this machine has no CUDA device; use device: auto or cpu")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device: {spec} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return dev
    return torch.device("cpu")
