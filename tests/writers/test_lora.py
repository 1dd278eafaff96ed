from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from ssam_cli.deltas import LowRankDelta
from ssam_cli.writers.lora import LoraAdapterWriter


def test_adapter_config_uses_rank_pattern_for_modules_below_the_max_rank(tmp_path):
    w = LoraAdapterWriter(tmp_path, torch.float32, base_model="base")
    w.add("model.layers.0.self_attn.q_proj.weight", LowRankDelta(torch.ones(4, 3), torch.ones(3, 5), scale=2.0))
    w.add("model.layers.0.mlp.up_proj.weight", LowRankDelta(torch.ones(6, 2), torch.ones(2, 4)))
    w.close()
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["r"] == cfg["lora_alpha"] == 3
    assert cfg["rank_pattern"] == cfg["alpha_pattern"] == {"model.layers.0.mlp.up_proj": 2}
    t = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert torch.equal(t["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"], torch.full((4, 3), 2.0))
