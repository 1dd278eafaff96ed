"""The benchmark's synthetic checkpoints, at toy shapes: loadable by ssam's sources, shaped and seeded as promised."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import make_checkpoints as mc  # noqa: E402

from ssam_cli.sources.checkpoint import FullCheckpoint  # noqa: E402
from ssam_cli.sources.lora import LoraAdapter  # noqa: E402

SHAPES = mc.Shapes(hidden=48, intermediate=80, vocab=40)
R = 8


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(mc, "CACHE", tmp_path)
    return tmp_path


def test_lora_adapters_are_peft_shaped_and_carry_the_structured_update(cache):
    folders = mc.make_lora(3, 2, r=R, alpha=2 * R, shapes=SHAPES)
    config = json.loads((folders[0] / "adapter_config.json").read_text())
    assert config["r"] == R and config["lora_alpha"] == 2 * R and len(config["target_modules"]) == 7
    src = LoraAdapter(folders[1])
    assert len(src.lowrank) == 2 * 7
    name = "model.layers.1.mlp.down_proj"
    delta = src.read_lowrank(f"{name}.weight")
    assert delta.shape == (SHAPES.hidden, SHAPES.intermediate) and delta.scale == 2.0
    US, Vt = mc.structured_update(delta.shape, R, 0, name, 1, mc.Structure())
    want = US @ Vt
    assert float((delta.dense().float() - want).norm() / want.norm()) < 1e-2  # bf16 storage
    sigma = torch.linalg.svdvals(want.double())[:R]
    assert torch.allclose(sigma, mc.spectrum(R, 1.5, float(want.norm())).double(), rtol=1e-4)  # σ_j ∝ j^-1.5
    assert float(want.norm()) == pytest.approx(0.02 * mc.BASE_STD * (SHAPES.hidden * SHAPES.intermediate) ** 0.5, rel=1e-4)


def test_specialists_share_part_of_their_subspaces(cache):
    name, shape = "model.layers.0.self_attn.q_proj", (SHAPES.hidden, SHAPES.hidden)
    U0 = mc.structured_update(shape, R, 0, name, 0, mc.Structure())[0]
    U1 = mc.structured_update(shape, R, 0, name, 1, mc.Structure())[0]
    cos = torch.linalg.svdvals(torch.linalg.qr(U0)[0].T @ torch.linalg.qr(U1)[0])
    assert int((cos > 0.9).sum()) >= R // 2 - 1  # the shared half
    assert float(cos.min()) < 0.9  # and a private part


def test_depths_share_tensors_and_reruns_are_identical(cache):
    two = mc.make_lora(1, 2, r=R, alpha=R, shapes=SHAPES)[0]
    one = mc.make_lora(1, 1, r=R, alpha=R, shapes=SHAPES)[0]
    key = "model.layers.0.self_attn.v_proj.weight"
    assert torch.equal(LoraAdapter(two).read_lowrank(key).A, LoraAdapter(one).read_lowrank(key).A)
    stamp = (one / ".complete").stat().st_mtime_ns
    mc.make_lora(1, 1, r=R, alpha=R, shapes=SHAPES)
    assert (one / ".complete").stat().st_mtime_ns == stamp  # cached, not rebuilt


def test_dense_checkpoints_share_shards_across_depths(cache):
    base2, specs2 = mc.make_dense(2, 2, shapes=SHAPES, rank=R)
    base1, _ = mc.make_dense(2, 1, shapes=SHAPES, rank=R)
    b2, s2 = FullCheckpoint(base2), FullCheckpoint(specs2[0])
    assert set(FullCheckpoint(base1).tensors) < set(b2.tensors)
    assert (base1 / "model-layer000.safetensors").resolve() == (base2 / "model-layer000.safetensors").resolve()
    assert json.loads((base2 / "config.json").read_text())["num_hidden_layers"] == 2
    key = "model.layers.1.mlp.up_proj.weight"
    assert b2.tensors[key].shape == (SHAPES.intermediate, SHAPES.hidden) and b2.tensors[key].dtype == torch.bfloat16
    delta = s2.read(key).double() - b2.read(key).double()
    assert 0.0 < float(delta.norm() / b2.read(key).double().norm()) < 0.2


def test_sparse_base_has_every_tensor_and_no_data(cache):
    folder = mc.make_sparse_base(3, SHAPES)
    src = FullCheckpoint(folder)
    assert len(src.tensors) == 3 + 3 * 9
    assert float(src.read("lm_head.weight").abs().sum()) == 0.0
