"""Open a checkpoint folder as the right kind of Source."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from ssam_cli.errors import InputError
from ssam_cli.sources.base import LowRankInfo, Source, TensorInfo
from ssam_cli.sources.checkpoint import FullCheckpoint, is_full_checkpoint
from ssam_cli.sources.lora import LoraAdapter, is_lora_adapter
from ssam_cli.sources.modelcompose import ModelComposeSpecialist, is_modelcompose

__all__ = ["open_source", "Source", "TensorInfo", "LowRankInfo"]


def open_source(path: Path, format: str = "auto", encoders: Optional[Mapping[str, str]] = None) -> Source:
    """`format: auto` recognises a ModelCompose specialist by adapter_model.bin beside a config.json of model_type
    multimodal (or with a lora_strategy), a PEFT adapter by adapter_config.json, a full checkpoint by its weights
    (safetensors, else torch zip-format `.bin`).
    `encoders` replaces encoder paths in a ModelCompose config (the recipe's `encoders:`)."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if format == "modelcompose" or (format == "auto" and is_modelcompose(path)):
        return ModelComposeSpecialist(path, encoders)
    if encoders:
        raise InputError(f"{path}: encoders: only a ModelCompose specialist has encoder paths to replace")
    if format == "lora" or (format == "auto" and is_lora_adapter(path)):
        return LoraAdapter(path)
    if format == "full" or (format == "auto" and is_full_checkpoint(path)):
        return FullCheckpoint(path)
    raise InputError(f"{path}: not a checkpoint ssam reads: expected model.safetensors, "
                     "model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json, "
                     "adapter_config.json, or config.json + adapter_model.bin (ModelCompose)")
