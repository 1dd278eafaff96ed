"""Models as they are on disk: a specialist adapter folder, or a `ssam merge` output (format full or lora).

The decoder goes through transformers/PEFT exactly as a user would load it; towers come from the adapter
(specialists) or from the merge's modalities/<name>.safetensors, located through manifest.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from benchmarks.lab import model as lm

PEFT_PREFIX = "base_model.model."


def tower_from_tensors(tensors: dict[str, torch.Tensor], modality: str) -> torch.nn.Module:
    """Rebuild a tower from tensors named modality.<modality>.*; strict, so a missing tensor fails loudly."""
    prefix = lm.tower_prefix(modality)
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"no tensors under {prefix}* for modality {modality}")
    token_lora = {}  # a DAMC-style tower also holds a LoRA for its own soft tokens: shapes from its tensors
    for k, b in state.items():
        if k.startswith("token_lora.B."):
            key = k[len("token_lora.B."):]
            token_lora[key.replace("__", ".")] = (b.shape[0], state[f"token_lora.A.{key}"].shape[1])
    tower = lm.new_tower(modality, token_lora or None)
    tower.load_state_dict(state, strict=True)
    return tower.eval()


def _with_adapter(base: Path, adapter: Path) -> torch.nn.Module:
    """Base + PEFT adapter, folded into plain weights (W0 + scale·B·A) for fast evaluation."""
    from peft import PeftModel

    return PeftModel.from_pretrained(lm.load_bert(base), str(adapter)).merge_and_unload().eval()


def adapter_modality(adapter: Path) -> str:
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        return (f.metadata() or {})["modality"]


def adapter_modalities(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The modalities whose towers an adapter holds (one for a specialist, all of them for the joint model)."""
    return sorted({k.split(".")[1] for k in tensors if k.startswith("modality.")})


def load_specialist(base: Path, adapter: Path) -> lm.PrefixLM:
    """One specialist (base + its own LoRA, with its tower), or the jointly trained model with all its towers."""
    raw = load_file(str(adapter / "adapter_model.safetensors"))
    tensors = {k[len(PEFT_PREFIX):]: v for k, v in raw.items() if k.startswith(PEFT_PREFIX + "modality.")}
    towers = {m: tower_from_tensors(tensors, m) for m in adapter_modalities(tensors)}
    return lm.PrefixLM(_with_adapter(base, adapter), lm.load_tokenizer(base), towers).eval()


def load_merged(base: Path, output: Path) -> lm.PrefixLM:
    """A merge output folder: the merged decoder (full checkpoint, or LoRA adapter on `base`) and every
    specialist's tower from the modality files the manifest lists."""
    manifest = json.loads((output / "manifest.json").read_text())
    fmt = manifest["output"]["format"]
    if fmt == "full":
        bert = lm.load_bert(output)
    elif fmt == "lora":
        bert = _with_adapter(base, output)
    else:
        raise ValueError(f"{output}: output format {fmt!r} is not loadable by the lab (full or lora)")
    towers = {}
    for entry in manifest.get("modalities", {}).values():
        tensors = load_file(str(output / entry["file"]))
        modality = entry["modality"]
        towers[modality] = tower_from_tensors(tensors, modality)
    return lm.PrefixLM(bert, lm.load_tokenizer(base), towers).eval()
