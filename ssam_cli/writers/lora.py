"""A PEFT LoRA adapter holding a low-rank merged update per weight, written without any base weight.

Each module gets r = its rank and lora_alpha = r (scale 1): lora_B carries the merge's scale. Modules of
different ranks use PEFT's rank_pattern/alpha_pattern keyed by the full module name.

Factors are spilled to a scratch file as they arrive, so memory stays at one weight's factors whatever the
depth (a 32-layer, k = 128 adapter is 0.6 GB). At close the safetensors file is laid out the way
safetensors.torch.save_file lays it out (tensors sorted by name) and filled from the scratch file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ssam_cli.deltas import LowRankDelta
from ssam_cli.writers.safetensors_stream import StreamingSafetensorsWriter, TensorSpec

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
SCRATCH = WEIGHTS + ".spill"
PREFIX = "base_model.model."


@dataclass(frozen=True)
class _Spilled:
    spec: TensorSpec
    offset: int  # in the scratch file


class LoraAdapterWriter:
    """Streams factored updates ((d_out + d_in)·k values per weight) to disk and writes the adapter at close."""

    def __init__(self, folder: Path, dtype: torch.dtype, base_model: Optional[str] = None) -> None:
        self.folder = folder
        self.dtype = dtype
        self.base_model = base_model
        self.spilled: dict[str, _Spilled] = {}
        self.ranks: dict[str, int] = {}
        self._scratch = open(folder / SCRATCH, "w+b")
        self._size = 0

    def add(self, weight_name: str, delta: LowRankDelta) -> None:
        if not weight_name.endswith(".weight"):
            raise ValueError(f"{weight_name}: a LoRA adapter targets `.weight` tensors")
        module = weight_name[: -len(".weight")]
        B = (delta.B * delta.scale).to(device="cpu", dtype=self.dtype).contiguous()
        A = delta.A.to(device="cpu", dtype=self.dtype).contiguous()
        self._spill(f"{PREFIX}{module}.lora_A.weight", A)
        self._spill(f"{PREFIX}{module}.lora_B.weight", B)
        self.ranks[module] = A.shape[0]

    def _spill(self, name: str, tensor: torch.Tensor) -> None:
        spec = TensorSpec(name, tuple(tensor.shape), tensor.dtype)
        self._scratch.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
        self.spilled[name] = _Spilled(spec, self._size)
        self._size += spec.nbytes

    def close(self) -> list[str]:
        if not self.ranks:
            self._discard()
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
        self._scratch.flush()
        order = sorted(self.spilled)  # safetensors' own order (one dtype): byte-identical to save_file
        out = StreamingSafetensorsWriter(self.folder / WEIGHTS, [self.spilled[n].spec for n in order])
        for name in order:
            out.copy(name, self._scratch, self.spilled[name].offset)
        out.close()
        self._discard()
        return [CONFIG, WEIGHTS]

    def _discard(self) -> None:
        self._scratch.close()
        (self.folder / SCRATCH).unlink(missing_ok=True)
