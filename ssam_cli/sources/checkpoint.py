"""A full Hugging Face checkpoint: `model.safetensors`, or shards listed by `model.safetensors.index.json`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ssam_cli.errors import InputError
from ssam_cli.sources.base import Source, TensorInfo
from ssam_cli.sources.safetensors_files import SafetensorsFiles

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def is_full_checkpoint(path: Path) -> bool:
    return path.is_file() and path.suffix == ".safetensors" or (path / INDEX).is_file() or (path / SINGLE).is_file()


class FullCheckpoint(Source):
    """Every tensor of a full model, read lazily."""

    kind = "full"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._store = SafetensorsFiles.from_paths([path]) if path.is_file() else self._from_folder(path)
        self._index = path / INDEX if path.is_dir() and (path / INDEX).is_file() else None

    @staticmethod
    def _from_folder(path: Path) -> SafetensorsFiles:
        index = path / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError):
                raise InputError(f"{index}: not a safetensors index (expected a 'weight_map' object)") from None
            return SafetensorsFiles({name: path / file for name, file in weight_map.items()})
        if (path / SINGLE).is_file():
            return SafetensorsFiles.from_paths([path / SINGLE])
        raise InputError(f"{path}: no {SINGLE} or {INDEX}")

    @property
    def tensors(self) -> dict[str, TensorInfo]:
        return self._store.infos

    def read(self, name: str) -> torch.Tensor:
        return self._store.read(name)

    def files(self) -> list[Path]:
        return self._store.files + ([self._index] if self._index else [])
