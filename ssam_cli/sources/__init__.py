"""Open a checkpoint folder as the right kind of Source."""

from __future__ import annotations

from pathlib import Path

from ssam_cli.errors import InputError
from ssam_cli.sources.base import LowRankInfo, Source, TensorInfo
from ssam_cli.sources.checkpoint import FullCheckpoint, is_full_checkpoint
from ssam_cli.sources.lora import LoraAdapter, is_lora_adapter

__all__ = ["open_source", "Source", "TensorInfo", "LowRankInfo"]


def open_source(path: Path, format: str = "auto") -> Source:
    """`format: auto` recognises a PEFT adapter by adapter_config.json, a full checkpoint by its safetensors."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if format == "lora" or (format == "auto" and is_lora_adapter(path)):
        return LoraAdapter(path)
    if format == "full" or (format == "auto" and is_full_checkpoint(path)):
        return FullCheckpoint(path)
    raise InputError(f"{path}: not a checkpoint ssam reads: expected model.safetensors, "
                     "model.safetensors.index.json or adapter_config.json")
