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
