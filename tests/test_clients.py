"""The outputs load in the real clients and give the same logits: transformers for a full output, PEFT for a
LoRA output on the base. Base and adapters are written by transformers and PEFT themselves."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from ssam_cli.engine import prepare, run_merge  # noqa: E402
from ssam_cli.recipe import load_recipe  # noqa: E402
from tests.fixtures.tiny import write_recipe  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    root = tmp_path_factory.mktemp("clients")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                                   num_hidden_layers=2, vocab_size=64, max_position_embeddings=32)
    base = transformers.LlamaForCausalLM(cfg)
    base.save_pretrained(root / "base")
    for i, r in enumerate((4, 8)):
        model = transformers.LlamaForCausalLM.from_pretrained(root / "base")
        lora = peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, init_lora_weights=False)
        peft.get_peft_model(model, lora, adapter_name="default").save_pretrained(root / f"s{i}")
    return root


def logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(ids).logits


def test_full_and_lora_outputs_load_and_agree(real):
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    for fmt in ("full", "lora"):
        recipe = write_recipe(real / f"{fmt}.yaml", real / "base", [("s0", real / "s0"), ("s1", real / "s1")],
                              parameters={"rank": 6}, output={"path": f"out-{fmt}", "format": fmt, "dtype": "float32"})
        run_merge(prepare(load_recipe(recipe)), show_progress=False, overwrite=True)
    full = transformers.AutoModelForCausalLM.from_pretrained(real / "out-full")
    base = transformers.AutoModelForCausalLM.from_pretrained(real / "base")
    with_adapter = peft.PeftModel.from_pretrained(base, real / "out-lora")
    a, b = logits(full, ids), logits(with_adapter, ids)
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())
    plain = logits(transformers.AutoModelForCausalLM.from_pretrained(real / "base"), ids)
    assert (a - plain).abs().max() > 1e-3  # the merge changed the model


def test_peft_merged_weights_equal_our_lowrank_reading(real):
    """Our reading of a PEFT adapter (keys, scale) equals what PEFT itself merges into the base."""
    from ssam_cli.sources import open_source

    base = transformers.AutoModelForCausalLM.from_pretrained(real / "base")
    merged = peft.PeftModel.from_pretrained(base, real / "s1").merge_and_unload().state_dict()
    ours = open_source(real / "s1")
    base_src = open_source(real / "base")
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.allclose(base_src.read(name) + ours.read_lowrank(name).dense(), merged[name], atol=1e-6)
