from __future__ import annotations

import json
import math

import pytest
import torch

from ssam_cli.errors import InputError
from ssam_cli.sources import open_source
from ssam_cli.sources.lora import LoraAdapter
from tests.fixtures.tiny import make_lora_specialist


def test_pairs_become_lowrank_deltas_on_base_weight_names_with_peft_scale(tmp_path):
    make_lora_specialist(tmp_path / "a", seed=1, r=4, alpha=8)
    src = open_source(tmp_path / "a")
    assert isinstance(src, LoraAdapter)
    name = "model.layers.0.mlp.down_proj.weight"
    assert src.lowrank[name].shape == (32, 48) and src.lowrank[name].rank == 4
    d = src.read_lowrank(name)
    assert d.scale == 2.0 and d.B.shape == (32, 4) and d.A.shape == (4, 48)
    assert src.tensors == {}


def test_rslora_scale_is_alpha_over_sqrt_r(tmp_path):
    make_lora_specialist(tmp_path / "a", seed=1, r=4, alpha=8, use_rslora=True)
    d = open_source(tmp_path / "a").read_lowrank("model.layers.0.self_attn.q_proj.weight")
    assert d.scale == pytest.approx(8 / math.sqrt(4))


def test_alpha_pattern_overrides_alpha_for_matching_modules(tmp_path):
    make_lora_specialist(tmp_path / "a", seed=1, r=4, alpha=8)
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    cfg["alpha_pattern"] = {"down_proj": 2}
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(cfg))
    src = open_source(tmp_path / "a")
    assert src.read_lowrank("model.layers.1.mlp.down_proj.weight").scale == 0.5
    assert src.read_lowrank("model.layers.1.mlp.up_proj.weight").scale == 2.0


def test_saved_modules_are_full_tensors_without_peft_wrapping(tmp_path):
    extra = {"base_model.model.lm_head.modules_to_save.default.weight": torch.zeros(64, 32)}
    make_lora_specialist(tmp_path / "a", seed=1, extra=extra)
    assert "lm_head.weight" in open_source(tmp_path / "a").tensors


def test_unpaired_factor_and_dora_are_named_errors(tmp_path):
    extra = {"base_model.model.model.layers.0.extra.lora_A.weight": torch.zeros(4, 32)}
    make_lora_specialist(tmp_path / "a", seed=1, extra=extra)
    with pytest.raises(InputError, match="model.layers.0.extra: has no lora_B"):
        open_source(tmp_path / "a")
    make_lora_specialist(tmp_path / "d", seed=1)
    cfg = json.loads((tmp_path / "d" / "adapter_config.json").read_text())
    (tmp_path / "d" / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(InputError, match="DoRA"):
        open_source(tmp_path / "d")


def test_pickled_adapter_loads_tensors_only_and_refuses_objects(tmp_path):
    make_lora_specialist(tmp_path / "a", seed=1)
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    (tmp_path / "a" / "adapter_model.safetensors").unlink()
    torch.save(tensors, tmp_path / "a" / "adapter_model.bin")
    assert len(open_source(tmp_path / "a").lowrank) == 14

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "a" / "adapter_model.bin")
    with pytest.raises(InputError, match="refused to load"):
        open_source(tmp_path / "a")


# Inconsistent adapters (issue 18): each refused naming adapter_config.json, where PEFT would load something else
# or nothing.

def edit_config(folder, **changes):
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return path


@pytest.mark.parametrize("key, value, shown", [
    ("lora_alpha", float("nan"), "nan"), ("lora_alpha", float("inf"), "inf"), ("lora_alpha", 0, "0"),
    ("lora_alpha", -8, "-8"), ("lora_alpha", True, "True"), ("r", None, "None"), ("r", "4", "'4'"),
])
def test_alpha_and_r_must_be_positive_finite_numbers(tmp_path, key, value, shown):
    make_lora_specialist(tmp_path / "a", seed=1)
    config = edit_config(tmp_path / "a", **{key: value})  # json writes NaN and Infinity, and reads them back
    with pytest.raises(InputError) as e:
        open_source(tmp_path / "a")
    assert str(e.value) == f"{config}: {key} must be a positive finite number, got {shown}"


def test_a_nan_in_alpha_pattern_is_refused_too(tmp_path):
    make_lora_specialist(tmp_path / "a", seed=1)
    config = edit_config(tmp_path / "a", alpha_pattern={"q_proj": float("nan")})
    with pytest.raises(InputError, match=f"{config}: alpha_pattern\\['q_proj'\\] must be a positive finite number"):
        open_source(tmp_path / "a")


def test_factors_of_another_rank_than_r_are_refused(tmp_path):
    make_lora_specialist(tmp_path / "a", seed=1, r=8, alpha=16)
    config = edit_config(tmp_path / "a", r=4)
    with pytest.raises(InputError) as e:
        open_source(tmp_path / "a")
    assert str(e.value) == (f"{config}: r is 4 but model.layers.0.mlp.down_proj has rank-8 factors in "
                            "adapter_model.safetensors; PEFT cannot load this adapter")


def test_rank_pattern_sets_the_rank_per_module_first_match_wins(tmp_path):
    """As PEFT's get_pattern_key: the first key matching the end of the module name gives r (and alpha)."""
    make_lora_specialist(tmp_path / "a", seed=1, r=8, alpha=16)
    edit_config(tmp_path / "a", r=4, lora_alpha=4, rank_pattern={".*": 8}, alpha_pattern={"q_proj": 2, ".*": 32})
    src = open_source(tmp_path / "a")
    assert src.read_lowrank("model.layers.0.self_attn.q_proj.weight").scale == 2 / 8
    assert src.read_lowrank("model.layers.0.mlp.up_proj.weight").scale == 32 / 8
    config = edit_config(tmp_path / "a", rank_pattern={"q_proj": 6, ".*": 8})
    with pytest.raises(InputError, match=f"{config}: rank_pattern\\['q_proj'\\] is 6 but "
                                         "model.layers.0.self_attn.q_proj has rank-8 factors"):
        open_source(tmp_path / "a")


def test_target_modules_naming_none_of_the_weights_are_refused(tmp_path):
    make_lora_specialist(tmp_path / "a", seed=1)
    config = edit_config(tmp_path / "a", target_modules=["query", "value"])
    with pytest.raises(InputError) as e:
        open_source(tmp_path / "a")
    assert str(e.value) == (f"{config}: target_modules ['query', 'value'] match none of the 14 modules with LoRA "
                            "weights in adapter_model.safetensors (e.g. model.layers.0.mlp.down_proj)")


def test_lora_weights_of_a_module_target_modules_leaves_out_are_refused(tmp_path):
    make_lora_specialist(tmp_path / "a", seed=1)
    config = edit_config(tmp_path / "a", target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    with pytest.raises(InputError) as e:
        open_source(tmp_path / "a")
    assert str(e.value) == (f"{config}: target_modules ['q_proj', 'k_proj', 'v_proj', 'o_proj'] do not name "
                            "model.layers.0.mlp.down_proj, which has LoRA weights in adapter_model.safetensors "
                            "(PEFT would ignore them)")


@pytest.mark.parametrize("targets", [r".*\.(q|k|v|o|gate|up|down)_proj", ["model.layers.0.self_attn.q_proj",
                                                                           "self_attn.k_proj", "v_proj", "o_proj",
                                                                           "mlp.gate_proj", "up_proj", "down_proj",
                                                                           "model.layers.1.self_attn.q_proj"]])
def test_target_modules_as_peft_matches_them_a_regex_full_names_or_suffixes(tmp_path, targets):
    make_lora_specialist(tmp_path / "a", seed=1)
    edit_config(tmp_path / "a", target_modules=targets)
    assert len(open_source(tmp_path / "a").lowrank) == 14


def test_adapters_peft_writes_with_rank_and_alpha_patterns_are_read_with_its_scales(tmp_path):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                                   num_hidden_layers=2, vocab_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                           rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 3}, init_lora_weights=False)
    peft.get_peft_model(transformers.LlamaForCausalLM(cfg), lora).save_pretrained(tmp_path / "a")
    src = open_source(tmp_path / "a")
    assert {n: (i.rank, src.scale(n, i.rank)) for n, i in src.lowrank.items() if "layers.1" in n} == {
        "model.layers.1.self_attn.q_proj.weight": (4, 2.0), "model.layers.1.self_attn.v_proj.weight": (4, 0.75),
        "model.layers.1.mlp.down_proj.weight": (2, 4.0)}
