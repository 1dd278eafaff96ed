"""A PEFT LoRA adapter holding a low-rank merged update per weight, written without any base weight.

Each module gets r = its rank and lora_alpha = r (scale 1): lora_B carries the merge's scale. Modules of
different ranks use PEFT's rank_pattern/alpha_pattern keyed by the full module name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file

from ssam_cli.deltas import LowRankDelta

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."


class LoraAdapterWriter:
    """Collects factored updates (small: (d_out + d_in)·k per weight) and writes the adapter at close."""

    def __init__(self, folder: Path, dtype: torch.dtype, base_model: Optional[str] = None) -> None:
        self.folder = folder
        self.dtype = dtype
        self.base_model = base_model
        self.tensors: dict[str, torch.Tensor] = {}
        self.ranks: dict[str, int] = {}

    def add(self, weight_name: str, delta: LowRankDelta) -> None:
        if not weight_name.endswith(".weight"):
            raise ValueError(f"{weight_name}: a LoRA adapter targets `.weight` tensors")
        module = weight_name[: -len(".weight")]
        B = (delta.B * delta.scale).to(device="cpu", dtype=self.dtype).contiguous()
        A = delta.A.to(device="cpu", dtype=self.dtype).contiguous()
        self.tensors[f"{PREFIX}{module}.lora_A.weight"] = A
        self.tensors[f"{PREFIX}{module}.lora_B.weight"] = B
        self.ranks[module] = A.shape[0]

    def close(self) -> list[str]:
        if not self.ranks:
            raise RuntimeError("no merged weights to write as a LoRA adapter")
        r = max(self.ranks.values())
        pattern = {m: k for m, k in self.ranks.items() if k != r}
        config = {
            "peft_type": "LORA",
            "task_type": None,
            "base_model_name_or_path": self.base_model,
            "r": r,
            "lora_alpha": r,
            "rank_pattern": pattern,
            "alpha_pattern": dict(pattern),
            "target_modules": sorted(self.ranks),
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": False,
            "use_rslora": False,
            "init_lora_weights": True,
            "modules_to_save": None,
            "inference_mode": True,
        }
        (self.folder / CONFIG).write_text(json.dumps(config, indent=2))
        save_file(self.tensors, str(self.folder / WEIGHTS), metadata={"format": "pt"})
        return [CONFIG, WEIGHTS]
