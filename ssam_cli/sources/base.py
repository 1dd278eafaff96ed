"""What every source of tensors offers: metadata without reading data, then one tensor at a time."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch

from ssam_cli.deltas import LowRankDelta


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of a stored tensor, read from a header, not from data."""

    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class LowRankInfo:
    """A weight the source changes by a low-rank update (LoRA): the weight's shape and the update's rank."""

    shape: tuple[int, int]
    rank: int


class Source(ABC):
    """A checkpoint seen lazily.

    `tensors` are full values stored by the source (every weight of a full checkpoint; modality-specific or
    saved modules of an adapter), keyed by the base model's tensor names. `lowrank` are weights the source
    changes by a low-rank update relative to the base, keyed by the base weight's name (`...q_proj.weight`).
    """

    kind: str = "?"

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    @abstractmethod
    def tensors(self) -> dict[str, TensorInfo]: ...

    @property
    def lowrank(self) -> dict[str, LowRankInfo]:
        return {}

    @property
    def shared(self) -> dict[str, TensorInfo]:
        """Language-side tensors the base lacks but every specialist of this kind holds (ModelCompose's `default`
        tokens): averaged across the specialists that hold them; read with `read`."""
        return {}

    @abstractmethod
    def read(self, name: str) -> torch.Tensor:
        """One stored tensor, as stored (dtype unchanged)."""

    def read_lowrank(self, name: str) -> LowRankDelta:
        raise KeyError(name)

    @abstractmethod
    def files(self) -> list[Path]:
        """Every file the source reads, for hashing into the manifest."""

    def file_of(self, name: str) -> Path:
        """The file that stores tensor (or low-rank weight) `name`, for messages; the source's path by default."""
        return self.path

    def describe(self) -> dict:
        """Facts for the manifest and the plan table (kind, and whatever the format adds)."""
        return {"kind": self.kind}
