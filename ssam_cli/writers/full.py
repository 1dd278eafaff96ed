"""A full checkpoint as Hugging Face writes it: `model.safetensors`, or shards + `model.safetensors.index.json`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

import torch

from ssam_cli.writers.safetensors_stream import StreamingSafetensorsWriter, TensorSpec

INDEX = "model.safetensors.index.json"
# Small files a model folder needs beside its weights; weights and their indexes are never copied.
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
              "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
              "chat_template.json", "chat_template.jinja", "preprocessor_config.json", "processor_config.json")


def shard_layout(specs: Sequence[TensorSpec], shard_size: int) -> list[list[TensorSpec]]:
    """Consecutive tensors packed into shards of at most shard_size bytes (a larger tensor gets its own)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > shard_size:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    return shards if shards[0] else []


class FullCheckpointWriter:
    """Streams the planned tensors into shards in plan order; writes the index when sharded."""

    def __init__(self, folder: Path, specs: Sequence[TensorSpec], shard_size: int) -> None:
        self.folder = folder
        self.shards = shard_layout(specs, shard_size)
        n = len(self.shards)
        self.names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self._shard = -1
        self._writer: StreamingSafetensorsWriter | None = None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._writer is None or self._writer.done:
            self._open_next()
        assert self._writer is not None
        self._writer.write(name, tensor)

    def _open_next(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._shard += 1
        self._writer = StreamingSafetensorsWriter(self.folder / self.names[self._shard], self.shards[self._shard])

    def close(self) -> list[str]:
        """Finish the last shard, check every shard was written in full, write the index; the files written."""
        if self._writer is not None:
            self._writer.close()
        if self._shard != len(self.shards) - 1:
            raise RuntimeError(f"wrote {self._shard + 1} of {len(self.shards)} shards")
        files = list(self.names)
        if len(self.shards) > 1:
            weight_map = {s.name: file for file, shard in zip(self.names, self.shards) for s in shard}
            total = sum(s.nbytes for shard in self.shards for s in shard)
            (self.folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                        indent=2))
            files.append(INDEX)
        return files


def copy_side_files(base: Path, folder: Path) -> list[str]:
    """Config, tokenizer and generation files of the base, so the output loads like the base does."""
    copied = []
    if base.is_dir():
        for name in SIDE_FILES:
            if (base / name).is_file():
                shutil.copy2(base / name, folder / name)
                copied.append(name)
    return copied
