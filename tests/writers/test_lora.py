from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file

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


def test_adapter_file_is_byte_identical_to_safetensors_save_file(tmp_path):
    """Spilled to disk while merging, the file still comes out exactly as save_file would write it."""
    g = torch.Generator().manual_seed(0)
    w = LoraAdapterWriter(tmp_path, torch.bfloat16)
    expected = {}
    for layer in (1, 0, 10, 2):  # arrival order differs from the file's (sorted) order
        for module, (d_out, d_in, k) in {"self_attn.q_proj": (8, 8, 3), "mlp.down_proj": (8, 20, 2)}.items():
            name = f"model.layers.{layer}.{module}"
            B, A = torch.randn(d_out, k, generator=g), torch.randn(k, d_in, generator=g)
            w.add(f"{name}.weight", LowRankDelta(B, A, scale=0.5))
            expected[f"base_model.model.{name}.lora_A.weight"] = A.to(torch.bfloat16)
            expected[f"base_model.model.{name}.lora_B.weight"] = (B * 0.5).to(torch.bfloat16)
    assert w.close() == ["adapter_config.json", "adapter_model.safetensors"]
    save_file(expected, str(tmp_path / "reference.safetensors"), metadata={"format": "pt"})
    assert (tmp_path / "adapter_model.safetensors").read_bytes() == (tmp_path / "reference.safetensors").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                         "reference.safetensors"]  # no scratch file left


def test_factors_are_not_held_in_memory(tmp_path):
    w = LoraAdapterWriter(tmp_path, torch.float32)
    w.add("m.weight", LowRankDelta(torch.ones(1024, 16), torch.ones(16, 1024)))  # 2 × 64 kB: past any buffer
    assert not any(isinstance(v, torch.Tensor) for v in vars(w).values())
    assert (tmp_path / "adapter_model.safetensors.spill").stat().st_size == 2 * 1024 * 16 * 4
    w.close()
