"""A ModelCompose (DAMC / NaiveMC) specialist: `config.json` + `adapter_model.bin` beside a separate base decoder.

The pickle holds LoRA pairs `model.layers.{L}.{self_attn|mlp}.{proj}.lora_{A|B}.<adapter>.weight`, the modality
projector `model.modal_projectors.<m>.*` and, for DAMC, `prefix_tokens.<m>` / `suffix_tokens.<m>`.
The `default` adapter is the language (text-token) LoRA: it is what gets merged. Everything else is modality-specific
and kept whole. ModelCompose builds one LoRA per modality next to `default` and, with `lora_strategy:
modal+language`, routes a modality's tokens through that modality's LoRA. A NaiveMC file (`lora_strategy: same`)
trained its modality tokens through `default`, so its modality LoRA *is* its own `default` LoRA: it is offered as
kept tensors under the modality's adapter name (what ModelCompose's own converter does), or the composed model would
silently run those tokens with no LoRA at all.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping, Optional

import torch

from ssam_cli.deltas import LowRankDelta
from ssam_cli.errors import InputError
from ssam_cli.sources import torch_bin
from ssam_cli.sources.base import LowRankInfo, Source, TensorInfo

CONFIG = "config.json"
WEIGHTS = "adapter_model.bin"
PEFT_CONFIG = "adapter_config.json"
LANGUAGE = "default"
# MultimodalConfig's class defaults, used by ModelCompose's loader when config.json omits them.
DEFAULT_LORA_R, DEFAULT_LORA_ALPHA = 128, 256
# Config key naming each modality's encoder; `mm_vision_encoder` and `mm_vision_tower` are aliases.
ENCODER_KEYS: dict[str, str] = {"mm_vision_tower": "vision", "mm_vision_encoder": "vision",
                                "mm_audio_encoder": "audio", "mm_video_encoder": "video", "mm_point_encoder": "point"}
PROJECTOR_TYPE_KEYS: dict[str, str] = {"vision": "mm_projector_type", "audio": "mm_audio_projector_type",
                                       "video": "mm_video_projector_type", "point": "mm_point_projector_type"}
STRATEGIES: dict[str, str] = {"same": "NaiveMC", "modal+language": "DAMC"}
PROJS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_KEY = re.compile(r"^model\.layers\.(?P<layer>\d+)\.(?P<block>self_attn|mlp)\.(?P<proj>[a-z_]+)"
                      r"\.lora_(?P<side>[AB])\.(?P<adapter>[^.]+)\.weight$")
PROJECTOR_KEY = re.compile(r"^model\.modal_projectors\.(?P<modality>[^.]+)\.")
TOKENS_KEY = re.compile(r"^(?P<kind>prefix|suffix)_tokens\.(?P<modality>[^.]+)$")


def lora_key(weight: str, side: str, adapter: str) -> str:
    """`model.layers.0.self_attn.q_proj.weight` → `model.layers.0.self_attn.q_proj.lora_A.<adapter>.weight`."""
    return f"{weight[: -len('.weight')]}.lora_{side}.{adapter}.weight"


def read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read as JSON ({e})") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: expected a JSON object")
    return config


def is_modelcompose(path: Path) -> bool:
    """adapter_model.bin beside a ModelCompose config.json (model_type multimodal, or a lora_strategy).

    A LLaVA LoRA folder also has config.json + adapter_model.bin, but with PEFT's adapter_config.json: not ours.
    """
    if not (path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file()):
        return False
    if (path / PEFT_CONFIG).exists():
        return False
    try:
        config = json.loads((path / CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and (config.get("model_type") == "multimodal" or "lora_strategy" in config)


def modality_of(config: Mapping, where: str) -> str:
    """The one modality whose encoder is set; none or several is an error (a composed model is not a specialist)."""
    found = sorted({m for key, m in ENCODER_KEYS.items() if isinstance(config.get(key), str) and config[key]})
    if len(found) != 1:
        what = "none is set" if not found else f"several are set ({', '.join(found)})"
        raise InputError(f"{where}: a ModelCompose specialist sets exactly one of {', '.join(ENCODER_KEYS)}; {what}")
    return found[0]


def load_tensor_dict(path: Path) -> dict[str, torch.Tensor]:
    """A torch pickle holding only name → tensor, memory-mapped; anything else is refused, never executed
    (torch_bin's rule; a small legacy-format file is read whole)."""
    return torch_bin.load_tensor_dict(path, allow_legacy=True)


class ModelComposeSpecialist(Source):
    """One DAMC or NaiveMC specialist: `lowrank` = its `default` LoRA, `tensors` = its modality-specific tensors."""

    kind = "modelcompose"

    def __init__(self, path: Path, encoders: Optional[Mapping[str, str]] = None) -> None:
        super().__init__(path)
        self.weights_file = path / WEIGHTS
        if not (path / CONFIG).is_file() or not self.weights_file.is_file():
            raise InputError(f"{path}: a ModelCompose specialist is a folder with {CONFIG} and {WEIGHTS}")
        self.config = remap_encoders(read_config(path / CONFIG), encoders or {}, path / CONFIG)
        where = str(path / CONFIG)
        self.modality = modality_of(self.config, where)
        strategy = self.config.get("lora_strategy") or "same"
        if strategy not in STRATEGIES:
            raise InputError(f"{where}: lora_strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
        self.lora_strategy = strategy
        self.lora_r = self._positive("lora_r", DEFAULT_LORA_R)
        self.lora_alpha = self._positive("lora_alpha", DEFAULT_LORA_ALPHA)
        self._store = load_tensor_dict(self.weights_file)
        self._lowrank: dict[str, LowRankInfo] = {}
        self._kept: dict[str, str] = {}  # kept name → stored key (a NaiveMC modality LoRA reads `default` bytes)
        self._classify()

    @property
    def variant(self) -> str:
        return STRATEGIES[self.lora_strategy]

    @property
    def scale(self) -> float:
        return self.lora_alpha / self.lora_r

    def _positive(self, key: str, default: int) -> float:
        value = self.config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise InputError(f"{self.path / CONFIG}: {key}: must be a positive number, got {value!r}")
        return value

    def _classify(self) -> None:
        where = str(self.weights_file)
        pairs: dict[tuple[str, str], dict[str, str]] = {}  # (weight, adapter) → side → key
        for key in self._store:
            m = LORA_KEY.match(key)
            if m:
                if m["proj"] not in PROJS:
                    raise InputError(f"{where}: {key}: LoRA on {m['proj']}, not a decoder projection "
                                     f"({', '.join(PROJS)})")
                weight = f"model.layers.{m['layer']}.{m['block']}.{m['proj']}.weight"
                pairs.setdefault((weight, m["adapter"]), {})[m["side"]] = key
                continue
            m = PROJECTOR_KEY.match(key) or TOKENS_KEY.match(key)
            if not m:
                raise InputError(f"{where}: {key}: not a ModelCompose adapter key (LoRA, modal_projectors or "
                                 "prefix/suffix tokens)")
            if m["modality"] != self.modality:
                raise InputError(f"{where}: {key}: belongs to modality {m['modality']!r} but config.json sets the "
                                 f"{self.modality} encoder")
            self._kept[key] = key
        allowed = {LANGUAGE, self.modality} if self.lora_strategy == "modal+language" else {LANGUAGE}
        by_adapter: dict[str, set[str]] = {}
        for (weight, adapter), sides in pairs.items():
            if adapter not in allowed:
                raise InputError(f"{where}: {sides[min(sides)]}: adapter {adapter!r} is not expected with "
                                 f"lora_strategy {self.lora_strategy!r} and modality {self.modality!r} "
                                 f"(expected {sorted(allowed)})")
            self._check_pair(weight, adapter, sides)
            by_adapter.setdefault(adapter, set()).add(weight)
            if adapter == LANGUAGE:
                a = self._store[sides["A"]]
                self._lowrank[weight] = LowRankInfo((self._store[sides["B"]].shape[0], a.shape[1]), a.shape[0])
            else:
                self._kept.update({sides["A"]: sides["A"], sides["B"]: sides["B"]})
        language = by_adapter.get(LANGUAGE, set())
        if not language:
            raise InputError(f"{where}: no `{LANGUAGE}` (language) LoRA: nothing to merge")
        if self.lora_strategy == "modal+language":
            self._check_modal_matches_language(language, by_adapter.get(self.modality, set()))
        else:  # NaiveMC: its modality tokens went through `default`; offer that LoRA under the modality's name
            for weight in self._lowrank:
                for side in "AB":
                    self._kept[lora_key(weight, side, self.modality)] = lora_key(weight, side, LANGUAGE)
        if not any(PROJECTOR_KEY.match(k) for k in self._kept):
            raise InputError(f"{where}: no model.modal_projectors.{self.modality}.* tensor: the {self.modality} "
                             "projector is missing")

    def _check_modal_matches_language(self, language: set[str], modal: set[str]) -> None:
        """DAMC: the modality LoRA sits on the same weights, at the same shapes, as the language LoRA."""
        where = str(self.weights_file)
        unpaired = sorted(language ^ modal)
        if unpaired:
            have, lack = (LANGUAGE, self.modality) if unpaired[0] in language else (self.modality, LANGUAGE)
            raise InputError(f"{where}: {lora_key(unpaired[0], 'A', lack)} is missing: a DAMC file pairs every "
                             f"`{have}` LoRA with a `{lack}` one")
        for weight in sorted(modal):
            for side in "AB":
                got = tuple(self._store[lora_key(weight, side, self.modality)].shape)
                want = tuple(self._store[lora_key(weight, side, LANGUAGE)].shape)
                if got != want:
                    raise InputError(f"{where}: {lora_key(weight, side, self.modality)} has shape {got}, the "
                                     f"`{LANGUAGE}` one {want}")

    def _check_pair(self, weight: str, adapter: str, sides: dict[str, str]) -> None:
        where = str(self.weights_file)
        if set(sides) != {"A", "B"}:
            raise InputError(f"{where}: {lora_key(weight, 'B' if 'A' in sides else 'A', adapter)} is missing")
        a, b = self._store[sides["A"]], self._store[sides["B"]]
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
            raise InputError(f"{where}: {sides['A']}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not chain")
        if a.shape[0] != self.lora_r:
            raise InputError(f"{where}: {sides['A']}: rank {a.shape[0]} but config.json lora_r is {self.lora_r}; "
                             "ModelCompose builds every LoRA at lora_r")

    @property
    def tensors(self) -> dict[str, TensorInfo]:
        store = self._store
        return {name: TensorInfo(tuple(store[key].shape), store[key].dtype) for name, key in self._kept.items()}

    @property
    def lowrank(self) -> dict[str, LowRankInfo]:
        return self._lowrank

    def read(self, name: str) -> torch.Tensor:
        return self._store[self._kept[name]]

    def read_lowrank(self, name: str) -> LowRankDelta:
        if name not in self._lowrank:
            raise KeyError(name)
        return LowRankDelta(self._store[lora_key(name, "B", LANGUAGE)], self._store[lora_key(name, "A", LANGUAGE)],
                            self.scale)

    def token_count(self, kind: str) -> int:
        """How many prefix/suffix tokens this modality was trained with (0 when the file has none)."""
        t = self._store.get(f"{kind}_tokens.{self.modality}")
        return int(t.shape[1]) if t is not None and t.ndim == 3 else 0

    def files(self) -> list[Path]:
        return [self.path / CONFIG, self.weights_file]

    def describe(self) -> dict:
        encoders = {k: self.config[k] for k in ENCODER_KEYS if self.config.get(k)}
        return {"kind": self.kind, "variant": self.variant, "modality": self.modality,
                "lora_strategy": self.lora_strategy, "lora_r": self.lora_r, "lora_alpha": self.lora_alpha,
                "encoders": encoders, "projector_type": self.config.get(PROJECTOR_TYPE_KEYS[self.modality]),
                "targets": len(self._lowrank)}


def remap_encoders(config: dict, encoders: Mapping[str, str], where: Path) -> dict:
    """Encoder paths in released configs are their authors' absolute paths: replace them as the recipe says.

    Remapping one vision alias remaps the other when it held the same path, because ModelCompose's loader copies
    `mm_vision_encoder` over `mm_vision_tower` and an old path left in either would win.
    """
    out = dict(config)
    for key, new in encoders.items():
        if key not in ENCODER_KEYS:
            raise InputError(f"{where}: encoders: {key}: not an encoder key "
                             f"(expected one of {', '.join(ENCODER_KEYS)})")
        if not config.get(key):
            raise InputError(f"{where}: encoders: {key}: config.json sets no {key} to replace")
        out[key] = new
        if ENCODER_KEYS[key] == "vision":
            for alias in ("mm_vision_tower", "mm_vision_encoder"):
                if alias not in encoders and config.get(alias) == config[key]:
                    out[alias] = new
    return out
