"""A full Hugging Face checkpoint: safetensors (`model.safetensors`, or shards listed by
`model.safetensors.index.json`), else torch zip-format pickles (`pytorch_model.bin`, or shards listed by
`pytorch_model.bin.index.json`, as Vicuna and LLaVA-era checkpoints ship). Where a folder holds both kinds,
safetensors wins, as in transformers.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Union

import torch

from ssam_cli.errors import InputError
from ssam_cli.sources import torch_bin
from ssam_cli.sources.base import Source, TensorInfo
from ssam_cli.sources.safetensors_files import SafetensorsFiles
from ssam_cli.sources.torch_bin import TorchBinFiles

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# (index, single file) per kind, in order of preference
LAYOUTS = ((INDEX, SINGLE), (torch_bin.INDEX, torch_bin.SINGLE))
FILE_SUFFIXES = (".safetensors", ".bin")

Store = Union[SafetensorsFiles, TorchBinFiles]


def is_full_checkpoint(path: Path) -> bool:
    if path.is_file():
        return path.suffix in FILE_SUFFIXES
    return any((path / name).is_file() for layout in LAYOUTS for name in layout)


def read_weight_map(index: Path) -> dict[str, Path]:
    """An index's tensor name → shard file. Every shard is a relative path inside the index's folder that exists:
    a downloaded index naming `../other/model.safetensors` or `/etc/passwd` is refused, never opened."""
    folder = index.parent
    shards = {name: folder / file for name, file in parse_weight_map(index).items()}
    for file in sorted(set(shards.values())):
        if not file.is_file():
            raise InputError(f"{index}: weight_map names {file.name}, which is not in {folder}")
    return shards


def parse_weight_map(index: Path) -> dict[str, str]:
    """An index's tensor name → shard file name, each a relative path inside the index's folder (not checked to
    exist: a Hub base read by header has its index here and its shards on the Hub)."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{index}: not a readable JSON index ({e})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise InputError(f"{index}: weight_map: expected an object of tensor name → shard file, "
                         f"got {type(weight_map).__name__ if weight_map is not None else 'nothing'}")
    shards: dict[str, str] = {}
    for name, file in weight_map.items():
        if not isinstance(file, str):
            raise InputError(f"{index}: weight_map: {name}: expected a shard file name, got {file!r}")
        shard = PurePosixPath(file)
        if not file or shard.is_absolute() or ".." in shard.parts or "\\" in file:
            raise InputError(f"{index}: weight_map: {name}: shard {file!r} is not a file inside {index.parent}")
        shards[name] = str(shard)
    return shards


def open_store(path: Path) -> tuple[Store, list[Path]]:
    """The tensor store of a checkpoint file or folder, and the index files it read (for the manifest)."""
    if path.is_file():
        return _store_of_file(path), []
    for index, single in LAYOUTS:
        if (path / index).is_file():
            file_of = read_weight_map(path / index)
            store = SafetensorsFiles(file_of) if index == INDEX else TorchBinFiles.from_index(file_of)
            return store, [path / index]
        if (path / single).is_file():
            return _store_of_file(path / single), []
    raise InputError(f"{path}: no {SINGLE}, {INDEX}, {torch_bin.SINGLE} or {torch_bin.INDEX}")


def _store_of_file(path: Path) -> Store:
    return SafetensorsFiles.from_paths([path]) if path.suffix == ".safetensors" else TorchBinFiles.from_paths([path])


class FullCheckpoint(Source):
    """Every tensor of a full model, read lazily."""

    kind = "full"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._store, self._indexes = open_store(path)

    @property
    def tensors(self) -> dict[str, TensorInfo]:
        return self._store.infos

    def read(self, name: str) -> torch.Tensor:
        return self._store.read(name)

    def file_of(self, name: str) -> Path:
        return self._store.file_of(name)

    def files(self) -> list[Path]:
        return self._store.files + self._indexes
