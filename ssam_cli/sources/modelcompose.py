"""A ModelCompose (DAMC / NaiveMC) specialist: `config.json` + `adapter_model.bin` beside a separate base decoder.

The pickle holds what ModelCompose's training saves (its trainable parameters, see modelcompose_layout): LoRA pairs
`model.layers.{L}.{self_attn|mlp}.{proj}.lora_{A|B}.<adapter>.weight`, the modality projector
`model.modal_projectors.<m>.*` and, when trained with local tokens, `prefix_tokens.<a>` / `suffix_tokens.<a>` for
`default` and the modality. The `default` LoRA is the language (text-token) LoRA: it is what gets merged. The
`default` tokens are language-side too, and shared by every specialist: they are averaged, as ModelCompose's own
merge script does. Everything else is modality-specific and kept whole. ModelCompose builds one LoRA per modality
next to `default` and, with `lora_strategy: modal+language`, routes a modality's tokens through that modality's
LoRA. A NaiveMC file (`lora_strategy: same`) trained its modality tokens through `default`, so its modality LoRA
*is* its own `default` LoRA: it is offered as kept tensors under the modality's adapter name (what ModelCompose's
own converter does), or the composed model would silently run those tokens with no LoRA at all.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping, Optional

import torch

from ssam_cli.deltas import LowRankDelta
from ssam_cli.errors import InputError
from ssam_cli.sources import modelcompose_layout as layout
from ssam_cli.sources import torch_bin
from ssam_cli.sources.base import LowRankInfo, Source, TensorInfo

CONFIG = "config.json"
WEIGHTS = "adapter_model.bin"
PEFT_CONFIG = "adapter_config.json"
LANGUAGE = layout.LANGUAGE
DEFAULT_LORA_R, DEFAULT_LORA_ALPHA = layout.DEFAULTS["lora_r"], layout.DEFAULTS["lora_alpha"]
# Config key naming each modality's encoder; `mm_vision_encoder` and `mm_vision_tower` are aliases.
ENCODER_KEYS: dict[str, str] = {"mm_vision_tower": "vision", "mm_vision_encoder": "vision",
                                "mm_audio_encoder": "audio", "mm_video_encoder": "video", "mm_point_encoder": "point"}
STRATEGIES: dict[str, str] = {"same": "NaiveMC", "modal+language": "DAMC"}
PROJS = layout.ATTENTION + layout.MLP
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
    """One DAMC or NaiveMC specialist: `lowrank` = its `default` LoRA, `tensors` = its modality-specific tensors,
    `shared` = its language-side tensors other than the LoRA (the `default` tokens), averaged across specialists.

    The file must hold exactly what ModelCompose's training saves for its config.json (modelcompose_layout.trained):
    a missing, extra or misshapen key is named before anything is merged.
    """

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
        expected = layout.trained(self.config, where)
        self._store = load_tensor_dict(self.weights_file)
        self._check_exact(expected)
        self._lowrank: dict[str, LowRankInfo] = {}
        self._kept: dict[str, str] = {}  # kept name → stored key (a NaiveMC modality LoRA reads `default` bytes)
        self._shared: dict[str, str] = {}
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

    def _what(self) -> str:
        ptype = self.config.get(layout.PROJECTOR_TYPE[self.modality], "linear")
        return (f"{self.variant} (lora_strategy {self.lora_strategy}), modality {self.modality}, projector {ptype}, "
                f"lora_r {self.lora_r}")

    def _check_exact(self, expected: Mapping[str, tuple[int, ...]]) -> None:
        """The file's keys and shapes are those ModelCompose's training saves for this config.json."""
        where = str(self.weights_file)
        for key in self._store:
            if key not in expected:
                raise InputError(f"{where}: {key}: {self._unexpected(key)}")
        missing = [k for k in expected if k not in self._store]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise InputError(f"{where}: {missing[0]} is missing{more}: ModelCompose's training saves it for this "
                             f"config.json ({self._what()})")
        for key, want in expected.items():
            got = tuple(self._store[key].shape)
            if got != tuple(want):
                raise InputError(f"{where}: {key} has shape {got}; ModelCompose builds {tuple(want)} for this "
                                 f"config.json ({self._what()})")

    def _unexpected(self, key: str) -> str:
        """Why a key is not one ModelCompose trains for this specialist, as precisely as the key allows."""
        m = LORA_KEY.match(key)
        if m:
            if m["proj"] not in PROJS:
                return f"LoRA on {m['proj']}, not a decoder projection ({', '.join(PROJS)})"
            allowed = [LANGUAGE, self.modality] if self.lora_strategy == "modal+language" else [LANGUAGE]
            if m["adapter"] not in allowed:
                return (f"adapter {m['adapter']!r} is not expected with lora_strategy {self.lora_strategy!r} and "
                        f"modality {self.modality!r} (expected {allowed})")
            return f"layer {m['layer']} is not a decoder layer of this config.json"
        m = PROJECTOR_KEY.match(key) or TOKENS_KEY.match(key)
        if not m:
            return "not a ModelCompose adapter key (LoRA, modal_projectors or prefix/suffix tokens)"
        if m["modality"] not in (self.modality, LANGUAGE):
            return f"belongs to modality {m['modality']!r} but config.json sets the {self.modality} encoder"
        return f"not a parameter ModelCompose builds for this config.json ({self._what()})"

    def _classify(self) -> None:
        for key in self._store:
            m = LORA_KEY.match(key)
            if not m:
                t = TOKENS_KEY.match(key)
                (self._shared if t and t["modality"] == LANGUAGE else self._kept)[key] = key
            elif m["adapter"] == LANGUAGE and m["side"] == "A":
                weight = f"model.layers.{m['layer']}.{m['block']}.{m['proj']}.weight"
                a, b = self._store[key], self._store[lora_key(weight, "B", LANGUAGE)]
                self._lowrank[weight] = LowRankInfo((b.shape[0], a.shape[1]), a.shape[0])
            elif m["adapter"] != LANGUAGE:
                self._kept[key] = key
        if self.lora_strategy == "same":  # NaiveMC: its modality tokens went through `default`; offer that LoRA
            for weight in self._lowrank:  # under the modality's name, as ModelCompose's own converter does
                for side in "AB":
                    self._kept[lora_key(weight, side, self.modality)] = lora_key(weight, side, LANGUAGE)

    @property
    def tensors(self) -> dict[str, TensorInfo]:
        return self._infos(self._kept)

    @property
    def shared(self) -> dict[str, TensorInfo]:
        """Language-side tensors every specialist of a composition may hold (the `default` prefix/suffix tokens):
        not modality-specific, so they are averaged across the specialists that have them, not kept."""
        return self._infos(self._shared)

    def _infos(self, names: Mapping[str, str]) -> dict[str, TensorInfo]:
        store = self._store
        return {name: TensorInfo(tuple(store[key].shape), store[key].dtype) for name, key in names.items()}

    @property
    def lowrank(self) -> dict[str, LowRankInfo]:
        return self._lowrank

    def read(self, name: str) -> torch.Tensor:
        return self._store[self._kept.get(name) or self._shared[name]]

    def read_lowrank(self, name: str) -> LowRankDelta:
        if name not in self._lowrank:
            raise KeyError(name)
        return LowRankDelta(self._store[lora_key(name, "B", LANGUAGE)], self._store[lora_key(name, "A", LANGUAGE)],
                            self.scale)

    def token_count(self, kind: str, adapter: Optional[str] = None) -> int:
        """How many prefix/suffix tokens the adapter (default: this modality) has (0 when the file has none)."""
        t = self._store.get(f"{kind}_tokens.{adapter or self.modality}")
        return int(t.shape[1]) if t is not None else 0

    def files(self) -> list[Path]:
        return [self.path / CONFIG, self.weights_file]

    def file_of(self, name: str) -> Path:
        return self.weights_file

    def describe(self) -> dict:
        encoders = {k: self.config[k] for k in ENCODER_KEYS if self.config.get(k)}
        return {"kind": self.kind, "variant": self.variant, "modality": self.modality,
                "lora_strategy": self.lora_strategy, "lora_r": self.lora_r, "lora_alpha": self.lora_alpha,
                "encoders": encoders, "projector_type": self.config.get(layout.PROJECTOR_TYPE[self.modality]),
                "targets": len(self._lowrank), "shared": sorted(self._shared)}


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
