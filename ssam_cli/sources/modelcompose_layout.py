"""Every parameter ModelCompose builds for a config.json, beyond the base decoder: name → shape.

Read from ModelCompose's code (THUNLP-MT/ModelCompose), not from any file it wrote:
- `model/language_model/multimodal_llama.py`: MultimodalConfig's class defaults; one `LocalLoraLinear` per decoder
  projection with a LoRA (`lora_A.<a>` (r, in), `lora_B.<a>` (out, r)) for every adapter of `infer_modals`
  (`default` first, then each modality whose encoder is set); `prefix_tokens` / `suffix_tokens` ParameterDicts over
  the same list (`default` included), (1, local_<a>_prefix_tokens or local_prefix_tokens, hidden), built only when
  local_prefix_tokens (local_suffix_tokens) is not 0.
- `model/multimodal_arch.py` + `model/multimodal_projector/builder.py`: `model.modal_projectors.<m>` for each
  modality whose encoder is not None (vision: `mm_vision_tower`), built only when some mm_*hidden_size is set;
  `linear`, `mlp<N>x_gelu` (nn.Sequential: Linear at 0, 2, …), `identity`, `qformer_<N>N_<L>L` (Video-LLaMA's audio
  Q-Former on a BERT-base config: 768 wide, 3072 FFN, cross-attention in every layer, the text FFN and word/position
  embeddings removed, a 4096-wide output projection, 1024 audio positions).
- `train/train_multimodal.py`: what a specialist's adapter_model.bin holds, i.e. the trainable parameters: tokens,
  projectors and the LoRAs its lora_strategy trains (`same`: `default` only; `modal+language`: all).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from ssam_cli.errors import InputError

Shape = tuple[int, ...]
LANGUAGE = "default"
# infer_modals: `default`, then the modalities in this order, each present when its encoder key is set.
MODALITY_ENCODERS: dict[str, tuple[str, ...]] = {"audio": ("mm_audio_encoder",),
                                                 "vision": ("mm_vision_encoder", "mm_vision_tower"),
                                                 "video": ("mm_video_encoder",), "point": ("mm_point_encoder",)}
# build_modal_projectors: the key whose non-None value builds the modality's projector.
PROJECTOR_ENCODER = {"audio": "mm_audio_encoder", "vision": "mm_vision_tower", "video": "mm_video_encoder",
                     "point": "mm_point_encoder"}
PROJECTOR_TYPE = {"vision": "mm_projector_type", "audio": "mm_audio_projector_type",
                  "video": "mm_video_projector_type", "point": "mm_point_projector_type"}
HIDDEN_KEYS = ("mm_hidden_size", "mm_audio_hidden_size", "mm_video_hidden_size", "mm_point_hidden_size")
# MultimodalConfig's class attributes and LlamaConfig's defaults, used when config.json omits a key.
DEFAULTS: dict[str, Any] = {"lora_r": 128, "lora_alpha": 256, "local_prefix_tokens": 0, "local_suffix_tokens": 0,
                            "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                            "num_attention_heads": 32}
ATTENTION, MLP = ("q_proj", "k_proj", "v_proj", "o_proj"), ("gate_proj", "up_proj", "down_proj")
# The Q-Former's BertConfig (bert-base) and VideoLlamaAudioQformer's fixed sizes.
QFORMER_WIDTH, QFORMER_FFN, QFORMER_OUT, QFORMER_POSITIONS = 768, 3072, 4096, 1024
MLP_GELU = re.compile(r"^mlp(\d+)x_gelu$")
QFORMER = re.compile(r"^qformer_(\d+)N_(\d+)L$")


def _int(config: Mapping, key: str, where: str, allow_zero: bool = False) -> int:
    value = config.get(key, DEFAULTS.get(key))
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (value == 0 and not allow_zero):
        raise InputError(f"{where}: {key}: expected a {'non-negative' if allow_zero else 'positive'} integer, "
                         f"got {value!r}")
    return value


def modalities(config: Mapping) -> list[str]:
    """infer_modals: the adapters ModelCompose builds, `default` first (audio and vision when their key is not None,
    video and point when it is non-empty, as infer_modals tests them)."""
    def present(m: str) -> bool:
        values = [config.get(k) for k in MODALITY_ENCODERS[m]]
        return any(v is not None for v in values) if m in ("audio", "vision") else any(values)

    return [LANGUAGE] + [m for m in MODALITY_ENCODERS if present(m)]


def lora_factors(config: Mapping, adapters: list[str], where: str) -> dict[str, Shape]:
    """lora_A / lora_B of every adapter on every decoder projection, at lora_r."""
    hidden, inter = _int(config, "hidden_size", where), _int(config, "intermediate_size", where)
    heads = _int(config, "num_attention_heads", where)
    kv_heads = config.get("num_key_value_heads") or heads  # LlamaConfig: None means as many as attention heads
    head_dim = hidden // heads
    r = _int(config, "lora_r", where)
    shapes = {"q_proj": (heads * head_dim, hidden), "k_proj": (kv_heads * head_dim, hidden),
              "v_proj": (kv_heads * head_dim, hidden), "o_proj": (hidden, heads * head_dim),
              "gate_proj": (inter, hidden), "up_proj": (inter, hidden), "down_proj": (hidden, inter)}
    out: dict[str, Shape] = {}
    for layer in range(_int(config, "num_hidden_layers", where)):
        for proj, (d_out, d_in) in shapes.items():
            module = f"model.layers.{layer}.{'self_attn' if proj in ATTENTION else 'mlp'}.{proj}"
            for a in adapters:
                out[f"{module}.lora_A.{a}.weight"] = (r, d_in)
                out[f"{module}.lora_B.{a}.weight"] = (d_out, r)
    return out


def tokens(config: Mapping, adapters: list[str], where: str) -> dict[str, Shape]:
    """prefix/suffix token parameters: none when local_<kind>_tokens is 0, else one per adapter (zero-size allowed)."""
    hidden = _int(config, "hidden_size", where)
    out: dict[str, Shape] = {}
    for kind in ("prefix", "suffix"):
        count = _int(config, f"local_{kind}_tokens", where, allow_zero=True)
        if count == 0:
            continue
        for a in adapters:
            key = f"local_{a}_{kind}_tokens"
            n = _int(config, key, where, allow_zero=True) if config.get(key) is not None else count
            out[f"{kind}_tokens.{a}"] = (1, n, hidden)
    return out


def _projector_input(config: Mapping, modality: str, where: str) -> int:
    """mm_hidden_size for vision; mm_<m>_hidden_size, else mm_hidden_size, else 768 for the others (builder.py)."""
    if modality == "vision":
        if "mm_hidden_size" not in config:
            raise InputError(f"{where}: mm_hidden_size: missing; ModelCompose sizes the vision projector by it")
        return _int(config, "mm_hidden_size", where)
    for key in (f"mm_{modality}_hidden_size", "mm_hidden_size"):
        if key in config:
            return _int(config, key, where)
    return 768


def _linear(name: str, d_out: int, d_in: int) -> dict[str, Shape]:
    """nn.Linear with bias (nn.LayerNorm is the same with d_in = 0: weight and bias of d_out)."""
    return {f"{name}.weight": (d_out, d_in) if d_in else (d_out,), f"{name}.bias": (d_out,)}


def qformer(queries: int, width: int, layers: int, positions: int) -> dict[str, Shape]:
    """VideoLlamaAudioQformer's parameters (relative to the projector): queries, BERT layers, output projection."""
    q, ffn = QFORMER_WIDTH, QFORMER_FFN
    out: dict[str, Shape] = {"audio_query_tokens": (1, queries, q),
                             **_linear("audio_Qformer.bert.embeddings.LayerNorm", q, 0)}
    for i in range(layers):
        layer = f"audio_Qformer.bert.encoder.layer.{i}"
        for part, kv_in in (("attention", q), ("crossattention", width)):
            for name, d_in in (("query", q), ("key", kv_in), ("value", kv_in)):
                out.update(_linear(f"{layer}.{part}.self.{name}", q, d_in))
            out.update({**_linear(f"{layer}.{part}.output.dense", q, q),
                        **_linear(f"{layer}.{part}.output.LayerNorm", q, 0)})
        out.update({**_linear(f"{layer}.intermediate_query.dense", ffn, q),
                    **_linear(f"{layer}.output_query.dense", q, ffn),
                    **_linear(f"{layer}.output_query.LayerNorm", q, 0)})
    out.update(_linear("audio_llama_proj", QFORMER_OUT, q))
    out["audio_position_embedding.weight"] = (positions, width)
    return out


def projector(config: Mapping, modality: str, where: str) -> dict[str, Shape]:
    """`model.modal_projectors.<modality>.*` as build_vision_projector builds it for the modality's type."""
    prefix = f"model.modal_projectors.{modality}."
    if modality == "audio" and "VideoLLaMA" in str(config.get("mm_audio_encoder")):
        return {prefix + k: s for k, s in qformer(8, 1024, 2, 8).items()}  # VideoLlamaAudioQformer(num_positions=8)
    kind = config.get(PROJECTOR_TYPE[modality], "linear")
    hidden, d_in = _int(config, "hidden_size", where), _projector_input(config, modality, where)
    if kind == "linear":
        return _linear(prefix[:-1], hidden, d_in)
    if kind == "identity":
        return {}
    m = MLP_GELU.match(str(kind))
    if m:
        out: dict[str, Shape] = {}
        for i in range(int(m[1])):  # Linear, GELU, Linear, …: the Linears sit at even indices
            out.update(_linear(f"{prefix}{2 * i}", hidden, d_in if i == 0 else hidden))
        return out
    m = QFORMER.match(str(kind))
    if m:
        return {prefix + k: s for k, s in qformer(int(m[1]), d_in, int(m[2]), QFORMER_POSITIONS).items()}
    raise InputError(f"{where}: {PROJECTOR_TYPE[modality]}: {kind!r} is not a projector type ModelCompose builds "
                     "(linear, mlp<N>x_gelu, qformer_<N>N_<L>L, identity)")


def projectors(config: Mapping, where: str) -> dict[str, Shape]:
    """Every modality projector MultimodalMetaModel builds (none unless some mm_*hidden_size is set)."""
    if not any(config.get(k) for k in HIDDEN_KEYS):
        return {}
    out: dict[str, Shape] = {}
    for modality, key in PROJECTOR_ENCODER.items():
        if config.get(key) is not None:
            out.update(projector(config, modality, where))
    return out


def built(config: Mapping, where: str) -> dict[str, Shape]:
    """Every LoRA, projector and token parameter MultimodalLlamaForCausalLM has for this config: what a composed
    adapter_model.bin must hold for the loader's `strict=False` load to leave nothing freshly initialised."""
    adapters = modalities(config)
    return {**lora_factors(config, adapters, where), **projectors(config, where), **tokens(config, adapters, where)}


def trained(config: Mapping, where: str) -> dict[str, Shape]:
    """What ModelCompose's training saves to adapter_model.bin for this config: projectors, tokens, and the LoRAs
    its lora_strategy makes trainable (`same`: `default`; `modal+language`: every adapter)."""
    adapters = modalities(config)
    strategy = config.get("lora_strategy") or "same"
    trained_adapters = adapters if strategy == "modal+language" else [LANGUAGE]
    return {**lora_factors(config, trained_adapters, where), **projectors(config, where),
            **tokens(config, adapters, where)}
