"""The parameter set ModelCompose builds for a config, against module trees built independently of it."""

from __future__ import annotations

import re

import pytest

from ssam_cli.errors import InputError
from ssam_cli.sources import modelcompose_layout as layout
from tests.fixtures.modelcompose import ENCODERS, multimodal_model, set_trainable, specialist_config
from tests.fixtures.tiny import HIDDEN

WHERE = "config.json"
BASE_WEIGHT = re.compile(r"^model\.layers\.\d+\.(self_attn|mlp)\.[a-z]+_proj\.weight$")


def _composed(tokens: dict[str, int], prefix: int = 5) -> dict:
    """A composed config of all four modalities, `tokens` per modality (as ssam writes it)."""
    config = specialist_config("vision", True, 2, 4, 8, prefix)
    for m in ("audio", "video", "point"):
        config.update(ENCODERS[m])
    for kind in ("prefix", "suffix"):
        config.update({f"local_{m}_{kind}_tokens": n for m, n in tokens.items()})
    return config


def _module_shapes(config: dict, trainable_only: bool = True) -> dict[str, tuple[int, ...]]:
    model = multimodal_model(config)
    if trainable_only:
        set_trainable(model, config["lora_strategy"])
    return {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad or not trainable_only}


def test_built_equals_the_module_tree_of_a_composed_config_including_empty_tokens():
    """Four modalities, audio trained without local tokens: its (1, 0, H) token parameters are built too."""
    config = _composed({"vision": 5, "audio": 0, "video": 2, "point": 5})
    built = layout.built(config, WHERE)
    expected = {k: v for k, v in _module_shapes(config, trainable_only=False).items()
                if not BASE_WEIGHT.match(k)}  # the frozen decoder projections come from the base
    assert built == expected
    assert built["prefix_tokens.audio"] == (1, 0, HIDDEN) and built["suffix_tokens.default"] == (1, 5, HIDDEN)
    assert built["prefix_tokens.video"] == (1, 2, HIDDEN)
    assert layout.modalities(config) == ["default", "audio", "vision", "video", "point"]


@pytest.mark.parametrize("modality, variant", [("vision", "damc"), ("audio", "naivemc"), ("point", "naivemc"),
                                               ("video", "damc")])
def test_trained_equals_what_the_training_script_marks_trainable(modality, variant):
    config = specialist_config(modality, variant == "damc", 2, 4, 8, 5 if variant == "damc" else 0)
    assert layout.trained(config, WHERE) == _module_shapes(config)


def test_no_tokens_are_built_when_local_tokens_is_zero_even_with_per_modality_counts():
    config = _composed({"vision": 5, "audio": 0, "video": 0, "point": 0}, prefix=0)
    assert not [k for k in layout.built(config, WHERE) if k.startswith(("prefix_tokens", "suffix_tokens"))]


def test_qformer_layers_match_transformers_port_of_the_blip2_qformer():
    """transformers' Blip2QFormerModel ports the same LAVIS Q-Former (it names `attention.self` `attention.attention`
    and keeps the embedding LayerNorm as `layernorm`): every layer parameter agrees in name and shape."""
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    hf = Blip2QFormerModel(Blip2QFormerConfig(num_hidden_layers=2, encoder_hidden_size=20,
                                              cross_attention_frequency=1, use_qformer_text_input=False))
    renamed = {n.replace(".attention.attention.", ".attention.self.").replace(".crossattention.attention.",
                                                                              ".crossattention.self.")
               .replace("layernorm.", "embeddings.LayerNorm."): tuple(p.shape) for n, p in hf.named_parameters()}
    ours = {k[len("audio_Qformer.bert."):]: s for k, s in layout.qformer(32, 20, 2, 1024).items()
            if k.startswith("audio_Qformer.bert.")}
    assert ours == renamed


@pytest.mark.parametrize("kind, keys", [
    ("linear", {"weight": (HIDDEN, 24), "bias": (HIDDEN,)}),
    ("mlp3x_gelu", {"0.weight": (HIDDEN, 24), "0.bias": (HIDDEN,), "2.weight": (HIDDEN, HIDDEN), "2.bias": (HIDDEN,),
                    "4.weight": (HIDDEN, HIDDEN), "4.bias": (HIDDEN,)}),
    ("identity", {}),
])
def test_projector_types(kind, keys):
    config = {**specialist_config("video", True, 2, 4, 8, 0), "mm_video_projector_type": kind}
    assert layout.projector(config, "video", WHERE) == {f"model.modal_projectors.video.{k}": s for k, s in keys.items()}


def test_projector_input_width_falls_back_as_the_builder_does():
    config = {k: v for k, v in specialist_config("point", True, 2, 4, 8, 0).items() if k != "mm_point_hidden_size"}
    assert layout.projector(config, "point", WHERE)["model.modal_projectors.point.0.weight"] == (HIDDEN, 768)
    config["mm_hidden_size"] = 1024  # a vision specialist's width in a union of configs
    assert layout.projector(config, "point", WHERE)["model.modal_projectors.point.0.weight"] == (HIDDEN, 1024)


def test_a_videollama_audio_encoder_builds_its_fixed_qformer():
    config = {**specialist_config("audio", True, 2, 4, 8, 0), "mm_audio_encoder": "/m/VideoLLaMA-7b"}
    built = layout.projector(config, "audio", WHERE)
    assert built["model.modal_projectors.audio.audio_query_tokens"] == (1, 8, 768)
    assert built["model.modal_projectors.audio.audio_position_embedding.weight"] == (8, 1024)


def test_no_projector_is_built_without_any_mm_hidden_size():
    config = {k: v for k, v in specialist_config("audio", True, 2, 4, 8, 0).items() if k != "mm_audio_hidden_size"}
    assert layout.projectors(config, WHERE) == {}


@pytest.mark.parametrize("changes, message", [({"mm_hidden_size": "1024"}, "mm_hidden_size: expected a positive"),
                                              ({"lora_r": 0}, "lora_r: expected a positive integer, got 0"),
                                              ({"local_prefix_tokens": -1}, "local_prefix_tokens: expected a non-neg")])
def test_bad_config_values_are_named(changes, message):
    config = {**specialist_config("vision", True, 2, 4, 8, 5), **changes}
    with pytest.raises(InputError, match=f"config.json: {message}"):
        layout.built(config, WHERE)
