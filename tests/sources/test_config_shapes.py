"""A config-only base: the adapters' shapes checked against what config.json gives, one line naming it otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssam_cli.errors import InputError
from ssam_cli.sources.base import LowRankInfo
from ssam_cli.sources.config_shapes import config_tensors, expected_shape

# a grouped-query config with an explicit head_dim (q: 8 × 16 = 128 rows, k/v: 2 × 16 = 32, hidden 96)
CONFIG = {"hidden_size": 96, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 16,
          "intermediate_size": 200, "num_hidden_layers": 2, "vocab_size": 50, "torch_dtype": "bfloat16"}


def write(tmp_path: Path, config: dict) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path / "config.json"


def check(path: Path, **shapes: tuple[int, int]) -> dict:
    targets = {name.replace("__", "."): LowRankInfo(shape, 4) for name, shape in shapes.items()}
    return config_tensors(path, targets, {name: "specialist 'a'" for name in targets})


def test_llama_projections_have_the_exact_shapes_the_config_gives():
    assert expected_shape("model.layers.0.self_attn.q_proj", CONFIG) == (128, 96)
    assert expected_shape("model.layers.1.self_attn.k_proj", CONFIG) == (32, 96)
    assert expected_shape("model.layers.1.self_attn.o_proj", CONFIG) == (96, 128)
    assert expected_shape("model.layers.0.mlp.down_proj", CONFIG) == (96, 200)
    assert expected_shape("lm_head", CONFIG) == (50, 96)
    assert expected_shape("model.layers.0.attn.c_attn", CONFIG) is None


def test_shapes_come_from_the_adapters_and_the_dtype_from_the_config(tmp_path: Path):
    infos = check(write(tmp_path, CONFIG), model__layers__1__self_attn__v_proj__weight=(32, 96),
                  model__layers__0__attn__c_attn__weight=(128, 96))
    assert {n: (i.shape, i.dtype) for n, i in infos.items()} == {
        "model.layers.1.self_attn.v_proj.weight": ((32, 96), torch.bfloat16),
        "model.layers.0.attn.c_attn.weight": ((128, 96), torch.bfloat16)}


@pytest.mark.parametrize("shapes, message", [
    ({"model__layers__0__self_attn__k_proj__weight": (128, 96)},
     r"^specialist 'a': LoRA on model.layers.0.self_attn.k_proj.weight has shape \(128, 96\), .*config.json gives "
     r"\(32, 96\)$"),
    ({"model__layers__2__self_attn__q_proj__weight": (128, 96)},
     r"^specialist 'a': LoRA target model.layers.2.self_attn.q_proj.weight is in block 2, but .*config.json has "
     r"num_hidden_layers 2$"),
    ({"model__layers__0__attn__c_attn__weight": (77, 96)},
     r"^specialist 'a': LoRA on model.layers.0.attn.c_attn.weight has shape \(77, 96\): 77 is none of the sizes "
     r".*config.json gives \(hidden_size 96, vocab_size 50, .*intermediate_size 200\)$"),
])
def test_an_adapter_the_config_does_not_fit_is_refused(tmp_path: Path, shapes, message):
    with pytest.raises(InputError, match=message):
        check(write(tmp_path, CONFIG), **shapes)


def test_a_config_without_the_sizes_is_refused_naming_the_key(tmp_path: Path):
    with pytest.raises(InputError, match=r"config.json: num_hidden_layers: expected a positive integer, got None$"):
        check(write(tmp_path, {k: v for k, v in CONFIG.items() if k != "num_hidden_layers"}))
