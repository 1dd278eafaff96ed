"""A composed ModelCompose model: `adapter_model.bin` + `config.json` that ModelCompose's loader reads as is.

The loader (`load_pretrained_model`, multimodal branch) builds MultimodalLlamaForCausalLM from config.json: one LoRA
per adapter (`default` + one per modality) at a single `lora_r`/`lora_alpha`, the modality projectors and the
prefix/suffix tokens; it resets every LoRA, casts the file to float16 and loads it with `strict=False`. A misspelt
key would be dropped without a word and a missing one left at its fresh initialisation, so the tensors written must
be exactly the parameter set it builds for the composed config (modelcompose_layout.built), with every value within
float16's range; the file is read back and compared with that set.
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
from ssam_cli.sources import modelcompose_layout as layout
from ssam_cli.sources.modelcompose import (LANGUAGE, LORA_KEY, TOKENS_KEY, WEIGHTS, ModelComposeSpecialist, lora_key,
                                           load_tensor_dict)

CONFIG = "config.json"
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
    """The specialists to compose, checked compatible before any tensor is read, and the composed config.json
    (without lora_r / lora_alpha, which depend on the merged rank)."""

    specialists: tuple[tuple[str, ModelComposeSpecialist], ...]
    scale: float  # lora_alpha / lora_r, shared by every specialist
    lora_r: int  # the largest specialist rank
    config: dict[str, Any] = field(default_factory=dict)
    shared: dict[str, tuple[str, ...]] = field(default_factory=dict)  # averaged tensor → specialists that hold it
    notes: tuple[str, ...] = ()  # config values the specialists disagree on

    def config_at(self, lora_r: int, lora_alpha: float) -> dict[str, Any]:
        return {**self.config, "lora_r": lora_r, "lora_alpha": lora_alpha}

    def built(self, lora_r: int) -> dict[str, tuple[int, ...]]:
        """Every parameter ModelCompose's loader builds for the composed config at this rank: name → shape."""
        return layout.built(self.config_at(lora_r, self.scale * lora_r), "composed config.json")


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
    shared = shared_tensors(chosen)
    config, notes = compose_config(chosen, shared)
    comp = Composition(tuple(chosen), first.scale, int(max(s.lora_r for _, s in chosen)), config, shared,
                       tuple(notes))
    check_kept_fit(comp)
    return comp


def shared_tensors(chosen: Sequence[tuple[str, ModelComposeSpecialist]]) -> dict[str, tuple[str, ...]]:
    """The `default` tokens and the specialists that hold them (the plan averages them and checks their shapes)."""
    holders: dict[str, list[str]] = {}
    for name, src in chosen:
        for key in src.shared:
            holders.setdefault(key, []).append(name)
    return {key: tuple(names) for key, names in holders.items()}


def check_kept_fit(comp: Composition) -> None:
    """Every kept projector and token tensor is a parameter of the composed model at the shape it has there (a
    config key missing from one specialist can change what the union of configs builds for it)."""
    built = comp.built(comp.lora_r)
    for name, src in comp.specialists:
        for key, info in src.tensors.items():
            if LORA_KEY.match(key):
                continue  # their rank is the written one: checked when written
            if tuple(info.shape) != built.get(key):
                want = f"builds {built[key]} there" if key in built else "has no such parameter"
                raise UserError(f"specialist '{name}': {key} {tuple(info.shape)}: the composed model's config.json "
                                f"{want}; check the specialists' {layout.PROJECTOR_TYPE[src.modality]} and "
                                "mm_*hidden_size entries")


@dataclass
class ComposeResult:
    """What was written, for the manifest."""

    files: list[str]
    lora_r: int
    lora_alpha: float
    modalities: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def compose_config(chosen: Sequence[tuple[str, ModelComposeSpecialist]],
                   shared: Mapping[str, Sequence[str]]) -> tuple[dict, list[str]]:
    """The union of the specialists' configs (first non-empty value wins, as ModelCompose's own merge does), made
    `modal+language`, with the prefix/suffix token counts set explicitly: local_<kind>_tokens is the `default`
    tokens' count (0, so none are built, when no specialist has them) and each modality keeps its own count, 0 for
    one trained without them. Returns the config and notes on values that disagreed."""
    composed: dict[str, Any] = {"lora_strategy": "modal+language"}
    for kind in ("prefix", "suffix"):
        holders = shared.get(f"{kind}_tokens.{LANGUAGE}", ())
        src = dict(chosen)[holders[0]] if holders else None
        composed[f"local_{kind}_tokens"] = src.token_count(kind, LANGUAGE) if src else 0
        composed.update({f"local_{s.modality}_{kind}_tokens": s.token_count(kind) for _, s in chosen})
    config: dict[str, Any] = {}
    differs: list[str] = []
    for _, src in chosen:
        for key, value in src.config.items():
            if key not in config or config[key] in (None, "", [], {}):
                config[key] = value
            elif value not in (None, "", [], {}) and value != config[key] and key not in composed \
                    and key not in ("lora_r", "lora_alpha"):
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
    from the page cache), else a compact copy: torch.save writes whole storages, so a view must not drag its
    base along."""
    whole = t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.nbytes
    return t if whole else t.contiguous().clone()


def write_modelcompose(folder: Path, comp: Composition, merged: Mapping[str, LowRankDelta],
                       kept: Mapping[str, Mapping[str, torch.Tensor]], averaged: Mapping[str, torch.Tensor],
                       dtype: torch.dtype) -> ComposeResult:
    """Write merged `default` LoRAs, every specialist's kept tensors, the averaged `default` tokens and the empty
    token parameters of modalities trained without them, as one composed model; then verify it.

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
    origin: dict[str, str] = {}
    for weight, d in merged.items():
        B = d.B if d.scale == comp.scale else d.B.float() * (d.scale / comp.scale)
        for side, t in (("A", d.A), ("B", B)):
            key = lora_key(weight, side, LANGUAGE)
            tensors[key] = _pad_rank(t, side, rank).to("cpu", dtype).contiguous()
            origin[key] = "the merge"
    modalities: dict[str, Any] = {}
    for name, src in comp.specialists:
        for key, t in kept.get(name, {}).items():
            if key in tensors:
                raise UserError(f"specialist '{name}': {key} is also written by another specialist or the merge")
            m = LORA_KEY.match(key)
            tensors[key] = _owning(_pad_rank(t, m["side"], rank) if m else t)
            origin[key] = f"specialist '{name}'"
        modalities[name] = {"file": WEIGHTS, "modality": src.modality, "variant": src.variant,
                            "tensors": sorted(kept.get(name, {})),
                            "averaged": sorted(k for k, names in comp.shared.items() if name in names)}
    for key, names in comp.shared.items():  # averaged by the engine (plan role `average`), in float32
        tensors[key] = averaged[key].to("cpu", dtype)
        origin[key] = f"the mean of {', '.join(repr(n) for n in names)}"
    if comp.shared:
        notes.append(f"{', '.join(sorted(comp.shared))}: the `default` (language-side) tokens, averaged over the "
                     "specialists that hold them, as ModelCompose's own merge does")
    built = comp.built(rank)
    empty = sorted(k for k, shape in built.items() if k not in tensors and TOKENS_KEY.match(k) and 0 in shape)
    for key in empty:
        tensors[key] = torch.zeros(built[key], dtype=dtype)
        origin[key] = "an empty token parameter"
    if empty:
        notes.append(f"{', '.join(empty)}: zero-size, as ModelCompose builds them for a modality trained without "
                     "local tokens (written so the file holds every parameter the loader builds)")
    check_loader_keys(tensors, built)
    check_loadable(tensors, origin)
    config = comp.config_at(rank, alpha_out)
    (folder / CONFIG).write_text(json.dumps(config, indent=2))
    torch.save(tensors, folder / WEIGHTS)
    del tensors
    verify_written(folder / WEIGHTS, built)
    return ComposeResult([CONFIG, WEIGHTS], rank, alpha_out, modalities, notes + list(comp.notes))


def check_loader_keys(tensors: Mapping[str, torch.Tensor], built: Mapping[str, tuple[int, ...]]) -> None:
    """Exactly the parameters ModelCompose builds for the composed config, at their shapes: its loader reads the file
    with strict=False, so this is the only guard against a dropped key or a parameter left freshly initialised."""
    extra = [k for k in tensors if k not in built]
    missing = [k for k in built if k not in tensors]
    wrong = [k for k in tensors if k in built and tuple(tensors[k].shape) != tuple(built[k])]
    if extra or missing or wrong:
        parts = [f"{what} {keys[:3]}" + (f" (+{len(keys) - 3})" if len(keys) > 3 else "")
                 for what, keys in (("unexpected", extra), ("missing", missing), ("misshapen", wrong)) if keys]
        raise RuntimeError(f"internal error: the composed tensors are not the parameters ModelCompose builds for the "
                           f"composed config: {'; '.join(parts)}")


FLOAT16_MAX = torch.finfo(torch.float16).max


def check_loadable(tensors: Mapping[str, torch.Tensor], origin: Mapping[str, str]) -> None:
    """Every value finite and within float16's range (ModelCompose's loader casts every tensor to float16, so a
    larger bf16 or float32 value would load as inf); checked before anything is written."""
    for key, t in tensors.items():
        if not t.dtype.is_floating_point or t.numel() == 0:
            continue
        who = origin.get(key, "")
        if not bool(torch.isfinite(t).all()):
            raise UserError(f"{key} has non-finite values (inf/nan), from {who}")
        peak = float(t.abs().max())
        if peak > FLOAT16_MAX:
            raise UserError(f"{key} has values up to {peak:.6g}, beyond float16's ±{FLOAT16_MAX:g} (from {who}); "
                            "ModelCompose's loader casts every tensor to float16, so they would load as inf")


def verify_written(path: Path, expected: Mapping[str, tuple[int, ...]]) -> None:
    """Read the file's index back: exactly the planned keys at the planned shapes (memory-mapped, no data read)."""
    found = {k: tuple(t.shape) for k, t in load_tensor_dict(path).items()}
    if set(found) != set(expected):
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        raise RuntimeError(f"{path}: written keys differ from the plan: missing {missing[:3]}, unexpected {extra[:3]}")
    for key, shape in found.items():
        if shape != tuple(expected[key]):
            raise RuntimeError(f"{path}: {key} has shape {shape}, planned {tuple(expected[key])}")


class ModelComposeWriter:
    """The engine's side: collect merged `default` updates (small, factored), write everything at close."""

    def __init__(self, folder: Path, comp: Composition, dtype: Optional[torch.dtype] = None) -> None:
        self.folder, self.comp = folder, comp
        first = comp.specialists[0][1]
        self.dtype = dtype or first.read_lowrank(next(iter(first.lowrank))).A.dtype
        self.merged: dict[str, LowRankDelta] = {}
        self.result: Optional[ComposeResult] = None

    def add(self, weight_name: str, delta: LowRankDelta) -> None:
        """Fold the update's scale into lora_B now (in float32) and keep it in the output dtype: small in memory."""
        B = (delta.B.float() * (delta.scale / self.comp.scale)).to("cpu", self.dtype)
        self.merged[weight_name] = LowRankDelta(B, delta.A.to("cpu", self.dtype), self.comp.scale)

    def close(self, averaged: Mapping[str, torch.Tensor]) -> list[str]:
        """Write everything; `averaged`: the shared `default` tokens' averages, by name."""
        kept = {name: {key: src.read(key) for key in src.tensors} for name, src in self.comp.specialists}
        self.result = write_modelcompose(self.folder, self.comp, self.merged, kept, averaged, self.dtype)
        return self.result.files
