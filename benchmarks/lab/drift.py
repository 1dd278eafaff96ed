"""How far a LoRA moved the weights it touches: ‖Δ‖_F / ‖W_0‖_F over all of them, Δ = (α/r)·B·A per weight.

The issue's measure of drift: merges interfere when the updates are large against the base."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from benchmarks.lab import train


def relative_drift(base: Path, adapter: Path) -> float:
    """sqrt(Σ‖Δ_l‖²) / sqrt(Σ‖W0_l‖²) over every weight l the adapter has a LoRA for, in float64."""
    cfg = json.loads((adapter / train.ADAPTER_CONFIG).read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    lora = load_file(str(adapter / train.ADAPTER_WEIGHTS))
    w0 = load_file(str(base / "model.safetensors"))
    delta_sq = base_sq = 0.0
    for key, a in lora.items():
        if not key.endswith("lora_A.weight"):
            continue
        b = lora[key.replace("lora_A", "lora_B")].double()
        name = key[len(train.PEFT_PREFIX):].replace(".lora_A.weight", ".weight")
        delta_sq += float((scale * b @ a.double()).square().sum())
        base_sq += float(w0[name].double().square().sum())
    if base_sq == 0.0:
        raise ValueError(f"{adapter}: no LoRA weight found")
    return (delta_sq / base_sq) ** 0.5
