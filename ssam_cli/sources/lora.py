"""A PEFT LoRA adapter: `adapter_config.json` + `adapter_model.safetensors` (or a weights-only `.bin`).

Every lora_A/lora_B pair becomes a LowRankDelta on the base weight it targets, with PEFT's scale
alpha/r (alpha/√r with use_rslora; rank_pattern/alpha_pattern honoured). Keys lose PEFT's wrapping
(`base_model.model.`, the adapter name, `modules_to_save.<name>`) so they name base tensors.

An adapter PEFT would load differently is refused, naming adapter_config.json: factors whose rank is not the
config's r (or rank_pattern's), LoRA weights of modules target_modules does not name (PEFT ignores them), and
target_modules naming none of the adapter's modules.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ssam_cli.deltas import LowRankDelta
from ssam_cli.errors import InputError
from ssam_cli.sources.base import LowRankInfo, Source, TensorInfo
from ssam_cli.sources.safetensors_files import SafetensorsFiles
from ssam_cli.sources.torch_bin import load_tensor_dict

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PICKLED = "adapter_model.bin"
PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<embedding>embedding_)?(?P<side>[AB])(?:\.(?P<adapter>[^.]+))?(?:\.weight)?$")


def is_lora_adapter(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file()


@dataclass(frozen=True)
class _Pair:
    a_key: str
    b_key: str
    embedding: bool


class LoraAdapter(Source):
    """Low-rank deltas of a PEFT adapter, plus any full tensors it saves (modules_to_save)."""

    kind = "lora"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.config = self._read_config(path / CONFIG)
        self._weights_file, self._store = self._open_weights(path)
        self._pairs: dict[str, _Pair] = {}
        self._full: dict[str, str] = {}
        self._lowrank: dict[str, LowRankInfo] = {}
        self._classify()

    @staticmethod
    def _read_config(path: Path) -> dict:
        try:
            config = json.loads(path.read_text())
        except ValueError as e:
            raise InputError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(config, dict):
            raise InputError(f"{path}: expected a JSON object")
        peft_type = str(config.get("peft_type", "LORA")).upper()
        if peft_type != "LORA":
            raise InputError(f"{path}: peft_type {peft_type} is not supported (only LORA)")
        if config.get("use_dora"):
            raise InputError(f"{path}: DoRA adapters are not supported (use_dora: true); merge their full weights instead")
        for key in ("r", "lora_alpha"):
            _check_positive(path, key, config.get(key))
        for key in ("rank_pattern", "alpha_pattern"):
            patterns = config.get(key) or {}
            if not isinstance(patterns, dict):
                raise InputError(f"{path}: {key} must be a mapping of module pattern → number, got {patterns!r}")
            for pattern, value in patterns.items():
                _check_positive(path, f"{key}[{pattern!r}]", value)
        return config

    @staticmethod
    def _open_weights(path: Path) -> tuple[Path, SafetensorsFiles | dict[str, torch.Tensor]]:
        if (path / WEIGHTS).is_file():
            return path / WEIGHTS, SafetensorsFiles.from_paths([path / WEIGHTS])
        if (path / PICKLED).is_file():
            return path / PICKLED, load_tensor_pickle(path / PICKLED)
        raise InputError(f"{path}: no {WEIGHTS} (or {PICKLED}) beside {CONFIG}")

    def _info(self, key: str) -> TensorInfo:
        if isinstance(self._store, SafetensorsFiles):
            return self._store.infos[key]
        t = self._store[key]
        return TensorInfo(tuple(t.shape), t.dtype)

    def _raw(self, key: str) -> torch.Tensor:
        return self._store.read(key) if isinstance(self._store, SafetensorsFiles) else self._store[key]

    def _keys(self) -> list[str]:
        return list(self._store.infos if isinstance(self._store, SafetensorsFiles) else self._store)

    def _classify(self) -> None:
        halves: dict[tuple[str, bool], dict[str, str]] = {}
        for key in self._keys():
            name = key[len(PREFIX):] if key.startswith(PREFIX) else key
            m = _LORA_KEY.match(name)
            if m:
                if ".lora_magnitude_vector" in name:
                    raise InputError(f"{self._weights_file}: {key}: DoRA magnitude vectors are not supported")
                halves.setdefault((m["module"], bool(m["embedding"])), {})[m["side"]] = key
                continue
            if "lora_magnitude_vector" in name:
                raise InputError(f"{self._weights_file}: {key}: DoRA magnitude vectors are not supported")
            name = re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)
            self._full[name] = key
        for (module, embedding), sides in halves.items():
            if set(sides) != {"A", "B"}:
                missing = "lora_B" if "A" in sides else "lora_A"
                raise InputError(f"{self._weights_file}: {module}: has no {missing} to pair with")
            a, b = self._info(sides["A"]), self._info(sides["B"])
            if len(a.shape) != 2 or len(b.shape) != 2:
                raise InputError(f"{self._weights_file}: {module}: only linear and embedding LoRA are supported "
                                 f"(got lora_A {a.shape})")
            if embedding:  # lora_embedding_A: r × num_embeddings, B: dim × r; ΔW = (B A)ᵀ
                r, shape = a.shape[0], (a.shape[1], b.shape[0])
            else:
                r, shape = a.shape[0], (b.shape[0], a.shape[1])
            if b.shape[1] != r:
                raise InputError(f"{self._weights_file}: {module}: lora_A rank {r} and lora_B rank {b.shape[1]} differ")
            said, where = self._configured(module, "rank_pattern", "r")
            if r != said:
                raise InputError(f"{self.path / CONFIG}: {where} is {said:g} but {module} has rank-{r} factors in "
                                 f"{self._weights_file.name}; PEFT cannot load this adapter")
            weight = f"{module}.weight"
            self._pairs[weight] = _Pair(sides["A"], sides["B"], embedding)
            self._lowrank[weight] = LowRankInfo(shape, r)
        self._check_targets([w[: -len(".weight")] for w in self._pairs])

    def _configured(self, module: str, pattern_key: str, key: str) -> tuple[float, str]:
        """The config's value for a module, as PEFT picks it: the first matching `pattern_key` entry, else `key`;
        with the name of the entry it came from, for messages."""
        for pattern, value in (self.config.get(pattern_key) or {}).items():
            if re.match(rf"(.*\.)?({pattern})$", module):
                return float(value), f"{pattern_key}[{pattern!r}]"
        return float(self.config[key]), key

    def _check_targets(self, modules: list[str]) -> None:
        """target_modules (a list of names or suffixes, or one regular expression) must name every module with LoRA
        weights, as PEFT creates LoRA layers only there and ignores weights elsewhere."""
        targets = self.config.get("target_modules")
        if targets is None or targets == "all-linear" or not modules:
            return
        if isinstance(targets, str):
            targeted = [m for m in modules if re.fullmatch(targets, m)]
        elif isinstance(targets, list) and all(isinstance(t, str) for t in targets):
            targeted = [m for m in modules if m in targets or any(m.endswith(f".{t}") for t in targets)]
        else:
            raise InputError(f"{self.path / CONFIG}: target_modules must be a list of module names or a regular "
                             f"expression, got {targets!r}")
        if not targeted:
            raise InputError(f"{self.path / CONFIG}: target_modules {targets!r} match none of the {len(modules)} "
                             f"modules with LoRA weights in {self._weights_file.name} (e.g. {sorted(modules)[0]})")
        missed = sorted(set(modules) - set(targeted))
        if missed and not self.config.get("layers_to_transform"):
            raise InputError(f"{self.path / CONFIG}: target_modules {targets!r} do not name {missed[0]}, which has "
                             f"LoRA weights in {self._weights_file.name} (PEFT would ignore them)")

    def scale(self, weight: str, rank: int) -> float:
        """PEFT's scaling for the module: alpha/r, or alpha/√r with use_rslora; the first matching alpha_pattern
        entry replaces alpha, as in PEFT."""
        alpha, _ = self._configured(weight[: -len(".weight")], "alpha_pattern", "lora_alpha")
        denominator = math.sqrt(rank) if self.config.get("use_rslora") else rank
        return alpha / denominator

    @property
    def tensors(self) -> dict[str, TensorInfo]:
        return {name: self._info(key) for name, key in self._full.items()}

    @property
    def lowrank(self) -> dict[str, LowRankInfo]:
        return self._lowrank

    def read(self, name: str) -> torch.Tensor:
        return self._raw(self._full[name])

    def read_lowrank(self, name: str) -> LowRankDelta:
        pair = self._pairs[name]
        A, B = self._raw(pair.a_key), self._raw(pair.b_key)
        scale = self.scale(name, A.shape[0])
        if pair.embedding:
            return LowRankDelta(A.T, B.T, scale)
        return LowRankDelta(B, A, scale)

    def files(self) -> list[Path]:
        return [self.path / CONFIG, self._weights_file]

    def file_of(self, name: str) -> Path:
        return self._weights_file

    def describe(self) -> dict:
        return {"kind": self.kind, "r": self.config["r"], "lora_alpha": self.config["lora_alpha"],
                "use_rslora": bool(self.config.get("use_rslora")), "targets": len(self._lowrank)}


def _check_positive(path: Path, key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{path}: {key} must be a positive finite number, got {value!r}")


def load_tensor_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A torch pickle holding only a dict of tensors; anything else is refused, never executed (torch_bin's rule)."""
    return load_tensor_dict(path, allow_legacy=True)
