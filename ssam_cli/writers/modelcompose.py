"""A composed ModelCompose model: `adapter_model.bin` + `config.json` that ModelCompose's loader reads as is.

The loader builds one LoRA per adapter (`default` + one per modality) at a single `lora_r`/`lora_alpha` and reads
the pickle with `strict=False`, so a misspelt key would be dropped without a word: every key written is checked
against the names and shapes the loader builds, and the file is read back and compared with the plan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from ssam_cli.deltas import LowRankDelta
from ssam_cli.errors import UserError
from ssam_cli.plan import NamedSource
from ssam_cli.sources.modelcompose import (LANGUAGE, LORA_KEY, PROJECTOR_KEY, PROJS, TOKENS_KEY, WEIGHTS,
                                           ModelComposeSpecialist, lora_key, load_tensor_dict)

CONFIG = "config.json"
SAFETENSORS = "adapter_model.safetensors"
# Keys that must agree for the specialists to share one decoder.
ARCHITECTURE = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size")


def loader_model_name(target: Path) -> str:
    """The name ModelCompose dispatches on: the folder name, or `<parent>_<name>` for a `checkpoint-*` folder."""
    if target.name.startswith("checkpoint-"):
        return f"{target.parent.name}_{target.name}"
    return target.name


def check_folder_name(target: Path) -> None:
    """ModelCompose loads a composed model only if its name contains `multimodal` and not `llava` (checked first)."""
    name = loader_model_name(target).lower()
    if "llava" in name:
        raise UserError(f"output.path: {target}: ModelCompose's loader reads any name containing 'llava' as a LLaVA "
                        "model; choose a folder name without it, e.g. merged-multimodal")
    if "multimodal" not in name:
        raise UserError(f"output.path: {target}: ModelCompose's loader recognises a composed model by 'multimodal' in "
                        f"its folder name; use e.g. {target.parent / (target.name + '-multimodal')}")


@dataclass(frozen=True)
class Composition:
    """The specialists to compose, checked compatible before any tensor is read."""

    specialists: tuple[tuple[str, ModelComposeSpecialist], ...]
    scale: float  # lora_alpha / lora_r, shared by every specialist
    lora_r: int  # the largest specialist rank

    @property
    def modalities(self) -> list[str]:
        return [s.modality for _, s in self.specialists]

    @property
    def layers(self) -> Optional[int]:
        return self.specialists[0][1].config.get("num_hidden_layers")


def check_composition(target: Path, specialists: Sequence[NamedSource]) -> Composition:
    """Fail early, naming the specialist, on anything that would make the composed model wrong."""
    check_folder_name(target)
    chosen: list[tuple[str, ModelComposeSpecialist]] = []
    by_modality: dict[str, str] = {}
    for named in specialists:
        src = named.source
        if not isinstance(src, ModelComposeSpecialist):
            raise UserError(f"specialist '{named.name}' ({src.path}) is a {src.kind} checkpoint; output.format: "
                            "modelcompose composes ModelCompose specialists only (config.json naming an mm_*_encoder, "
                            "and adapter_model.bin)")
        if src.modality in by_modality:
            raise UserError(f"specialists '{by_modality[src.modality]}' and '{named.name}' both bring the "
                            f"{src.modality} modality; a composed model holds one projector and LoRA per modality")
        by_modality[src.modality] = named.name
        chosen.append((named.name, src))
    first_name, first = chosen[0]
    for name, src in chosen[1:]:
        if src.scale != first.scale:
            raise UserError(f"specialist '{name}': lora_alpha/lora_r = {src.lora_alpha}/{src.lora_r} differs from "
                            f"'{first_name}' ({first.lora_alpha}/{first.lora_r}); ModelCompose applies one scale to "
                            "every LoRA, so their modality LoRAs cannot be kept unchanged")
        for key in ARCHITECTURE:
            if key in src.config and key in first.config and src.config[key] != first.config[key]:
                raise UserError(f"specialist '{name}': config.json {key} = {src.config[key]}, but '{first_name}' has "
                                f"{first.config[key]}: not the same decoder")
    return Composition(tuple(chosen), first.scale, int(max(s.lora_r for _, s in chosen)))


@dataclass
class ComposeResult:
    """What was written, for the manifest."""

    files: list[str]
    lora_r: int
    lora_alpha: float
    modalities: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def compose_config(comp: Composition, lora_r: int, lora_alpha: float) -> tuple[dict, list[str]]:
    """The union of the specialists' configs (first non-empty value wins, as ModelCompose's own merge does), made
    `modal+language` at the written rank, with each modality's prefix/suffix token count set explicitly so a
    NaiveMC modality (trained without them) gets none. Returns the config and notes on values that disagreed."""
    composed: dict[str, Any] = {"lora_strategy": "modal+language", "lora_r": lora_r, "lora_alpha": lora_alpha}
    for kind in ("prefix", "suffix"):
        counts = {src.modality: src.token_count(kind) for _, src in comp.specialists}
        composed[f"local_{kind}_tokens"] = max(counts.values())
        composed.update({f"local_{m}_{kind}_tokens": n for m, n in counts.items()})
    config: dict[str, Any] = {}
    differs: list[str] = []
    for _, src in comp.specialists:
        for key, value in src.config.items():
            if key not in config or config[key] in (None, "", [], {}):
                config[key] = value
            elif value not in (None, "", [], {}) and value != config[key] and key not in composed:
                if key not in differs:
                    differs.append(key)
    config.update(composed)
    notes = [f"config.json: {', '.join(differs)} differ between specialists; the first specialist's value is kept"] \
        if differs else []
    return config, notes


def _pad_rank(t: torch.Tensor, side: str, rank: int) -> torch.Tensor:
    """Zero rows of lora_A / zero columns of lora_B: the same ΔW at a larger rank, exactly."""
    have = t.shape[0] if side == "A" else t.shape[1]
    if have == rank:
        return t
    pad = (0, 0, 0, rank - have) if side == "A" else (0, rank - have)
    return torch.nn.functional.pad(t, pad)


def _owning(t: torch.Tensor) -> torch.Tensor:
    """t itself when it is exactly its whole storage (a memory-mapped tensor from a source file is written straight
    from the page cache), else a compact copy: both writers save whole storages, so a view must not drag its
    base along."""
    whole = t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.nbytes
    return t if whole else t.contiguous().clone()


def write_modelcompose(folder: Path, comp: Composition, merged: Mapping[str, LowRankDelta],
                       kept: Mapping[str, Mapping[str, torch.Tensor]], dtype: torch.dtype,
                       safetensors: bool = False) -> ComposeResult:
    """Write merged `default` LoRAs and every specialist's kept tensors as one composed model, then verify it.

    lora_r is the largest of the specialists' ranks and the merged ranks; lora_alpha = scale · lora_r keeps every
    specialist's scale, so kept LoRAs need no rescaling (only zero-padding when the rank grows) and the merged
    update's own scale is folded into lora_B.
    """
    rank = max([comp.lora_r] + [d.rank for d in merged.values()])
    alpha = comp.scale * rank
    alpha_out: float = int(alpha) if float(alpha).is_integer() else alpha
    notes: list[str] = []
    if rank > comp.lora_r:
        notes.append(f"lora_r raised from {comp.lora_r} to {rank} to hold the merged update exactly "
                     f"(lora_alpha {comp.scale * comp.lora_r:g} → {alpha_out}, scale {comp.scale:g} unchanged); "
                     "modality LoRAs are zero-padded to that rank, their ΔW unchanged")
    tensors: dict[str, torch.Tensor] = {}
    expected: dict[str, tuple[int, ...]] = {}
    for weight, d in merged.items():
        B = d.B if d.scale == comp.scale else d.B.float() * (d.scale / comp.scale)
        tensors[lora_key(weight, "A", LANGUAGE)] = _pad_rank(d.A, "A", rank).to("cpu", dtype).contiguous()
        tensors[lora_key(weight, "B", LANGUAGE)] = _pad_rank(B, "B", rank).to("cpu", dtype).contiguous()
        expected[lora_key(weight, "A", LANGUAGE)] = (rank, d.shape[1])
        expected[lora_key(weight, "B", LANGUAGE)] = (d.shape[0], rank)
    modalities: dict[str, Any] = {}
    weights_name = SAFETENSORS if safetensors else WEIGHTS
    for (name, src) in comp.specialists:
        for key, t in kept.get(name, {}).items():
            if key in tensors:
                raise UserError(f"specialist '{name}': {key} is also written by another specialist or the merge")
            m = LORA_KEY.match(key)
            value = _pad_rank(t, m["side"], rank) if m else t
            tensors[key] = _owning(value)
            expected[key] = tuple(value.shape)
        modalities[name] = {"file": weights_name, "modality": src.modality, "variant": src.variant,
                            "tensors": sorted(kept.get(name, {}))}
    check_loader_keys(tensors, comp, rank)
    check_finite(tensors)
    config, config_notes = compose_config(comp, rank, alpha_out)
    (folder / CONFIG).write_text(json.dumps(config, indent=2))
    if safetensors:
        from safetensors.torch import save_file

        save_file(tensors, str(folder / SAFETENSORS), metadata={"format": "pt"})
    else:
        torch.save(tensors, folder / WEIGHTS)
    del tensors
    verify_written(folder / weights_name, expected)
    return ComposeResult([CONFIG, weights_name], rank, alpha_out, modalities, notes + config_notes)


def check_loader_keys(tensors: Mapping[str, torch.Tensor], comp: Composition, rank: int) -> None:
    """Every key names a parameter ModelCompose builds for these modalities, at the shape it builds."""
    adapters = {LANGUAGE, *comp.modalities}
    layers = comp.layers
    for key, t in tensors.items():
        m = LORA_KEY.match(key)
        if m:
            ok = (m["adapter"] in adapters and m["proj"] in PROJS and (layers is None or int(m["layer"]) < layers)
                  and t.ndim == 2 and (t.shape[0] if m["side"] == "A" else t.shape[1]) == rank)
        else:
            m = PROJECTOR_KEY.match(key) or TOKENS_KEY.match(key)
            ok = bool(m) and m["modality"] in comp.modalities
        if not ok:
            raise RuntimeError(f"internal error: {key} {tuple(t.shape)} is not a parameter ModelCompose builds for "
                               f"adapters {sorted(adapters)} at lora_r {rank}")


def check_finite(tensors: Mapping[str, torch.Tensor]) -> None:
    """No inf/nan goes into the composed model (checked on the tensors written, before writing)."""
    for key, t in tensors.items():
        if t.dtype.is_floating_point and not bool(torch.isfinite(t).all()):
            raise UserError(f"{key} has non-finite values (inf/nan); check the specialist that provides it")


def verify_written(path: Path, expected: Mapping[str, tuple[int, ...]]) -> None:
    """Read the file's index back: exactly the planned keys at the planned shapes (headers only, no data read)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    else:
        found = {k: tuple(t.shape) for k, t in load_tensor_dict(path).items()}  # memory-mapped: data untouched
    if set(found) != set(expected):
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        raise RuntimeError(f"{path}: written keys differ from the plan: missing {missing[:3]}, unexpected {extra[:3]}")
    for key, shape in found.items():
        if shape != tuple(expected[key]):
            raise RuntimeError(f"{path}: {key} has shape {shape}, planned {tuple(expected[key])}")


class ModelComposeWriter:
    """The engine's side: collect merged `default` updates (small, factored), write everything at close."""

    def __init__(self, folder: Path, comp: Composition, dtype: Optional[torch.dtype] = None,
                 safetensors: bool = False) -> None:
        self.folder, self.comp, self.safetensors = folder, comp, safetensors
        first = comp.specialists[0][1]
        self.dtype = dtype or first.read_lowrank(next(iter(first.lowrank))).A.dtype
        self.merged: dict[str, LowRankDelta] = {}
        self.result: Optional[ComposeResult] = None

    def add(self, weight_name: str, delta: LowRankDelta) -> None:
        """Fold the update's scale into lora_B now (in float32) and keep it in the output dtype: small in memory."""
        B = (delta.B.float() * (delta.scale / self.comp.scale)).to("cpu", self.dtype)
        self.merged[weight_name] = LowRankDelta(B, delta.A.to("cpu", self.dtype), self.comp.scale)

    def close(self) -> list[str]:
        kept = {name: {key: src.read(key) for key in src.tensors} for name, src in self.comp.specialists}
        self.result = write_modelcompose(self.folder, self.comp, self.merged, kept, self.dtype, self.safetensors)
        return self.result.files
