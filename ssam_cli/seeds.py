"""Reproducible randomness per tensor: a seed from the recipe's seed and the tensor's name, never from the order."""

from __future__ import annotations

import hashlib


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed independent of processing order, so reruns and partial plans agree."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)
