"""The base's weights as a low-rank merge needs them, from config.json alone: the names and shapes the adapters
update, each checked against the sizes the config gives (a Llama-family decoder's projections exactly, any other
weight dimension by dimension). No weight file is read, or needed: a config-only base folder, or a `.bin`-only Hub
base, serves a LoRA or ModelCompose output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional

import torch

from ssam_cli.errors import InputError
from ssam_cli.sources.base import LowRankInfo, TensorInfo

CONFIG = "config.json"
REQUIRED = ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def read_config(path: Path) -> dict:
    """config.json as a mapping (the text part of a multimodal config), with the sizes checked present."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable JSON config ({e})") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: expected a JSON object")
    config = config.get("text_config") or config
    for key in REQUIRED:
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InputError(f"{path}: {key}: expected a positive integer, got {value!r}")
    return config


def sizes(config: Mapping) -> dict[str, int]:
    """The dimensions a decoder of this config has, by what they are."""
    d, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or d // heads
    out = {"hidden_size": d, "vocab_size": config["vocab_size"], "num_attention_heads × head_dim": heads * head_dim,
           "num_key_value_heads × head_dim": (config.get("num_key_value_heads") or heads) * head_dim}
    if config.get("intermediate_size"):
        out["intermediate_size"] = config["intermediate_size"]
    return out


def expected_shape(module: str, config: Mapping) -> Optional[tuple[int, int]]:
    """The exact (d_out, d_in) of a Llama-family decoder weight, by its module name; None for other modules."""
    s = sizes(config)
    d, q, kv, inter = s["hidden_size"], s["num_attention_heads × head_dim"], s["num_key_value_heads × head_dim"], \
        s.get("intermediate_size")
    table = {"self_attn.q_proj": (q, d), "self_attn.k_proj": (kv, d), "self_attn.v_proj": (kv, d),
             "self_attn.o_proj": (d, q), "lm_head": (s["vocab_size"], d), "embed_tokens": (s["vocab_size"], d)}
    if inter:
        table.update({"mlp.gate_proj": (inter, d), "mlp.up_proj": (inter, d), "mlp.down_proj": (d, inter)})
    for suffix, shape in table.items():
        if module == suffix or module.endswith("." + suffix):
            return shape
    return None


def config_tensors(path: Path, targets: Mapping[str, LowRankInfo], where: Mapping[str, str]) -> dict[str, TensorInfo]:
    """The base weights the adapters update (name → shape from the adapters, dtype from the config), each shape
    checked against config.json; `where` names the specialist that first targets each weight, for messages."""
    from ssam_cli.plan import layer_of

    config = read_config(path)
    dims = sizes(config)
    layers = config["num_hidden_layers"]
    dtype = DTYPES.get(str(config.get("torch_dtype") or config.get("dtype")), torch.float32)
    out: dict[str, TensorInfo] = {}
    for name, info in targets.items():
        module = name[: -len(".weight")] if name.endswith(".weight") else name
        if layer_of(name) >= layers:
            raise InputError(f"{where[name]}: LoRA target {name} is in block {layer_of(name)}, but {path} has "
                             f"num_hidden_layers {layers}")
        want = expected_shape(module, config)
        if want is not None and tuple(info.shape) != want:
            raise InputError(f"{where[name]}: LoRA on {name} has shape {tuple(info.shape)}, {path} gives {want}")
        unknown = [n for n in info.shape if n not in dims.values()]
        if want is None and unknown:
            given = ", ".join(f"{k} {v}" for k, v in dims.items())
            raise InputError(f"{where[name]}: LoRA on {name} has shape {tuple(info.shape)}: {unknown[0]} is none of "
                             f"the sizes {path} gives ({given})")
        out[name] = TensorInfo(tuple(info.shape), dtype)
    return out
