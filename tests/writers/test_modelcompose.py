from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ssam_cli.deltas import LowRankDelta
from ssam_cli.errors import UserError
from ssam_cli.methods import REGISTRY
from ssam_cli.methods.base import MergeContext
from ssam_cli.plan import NamedSource
from ssam_cli.sources import open_source
from ssam_cli.sources.modelcompose import load_tensor_dict
from ssam_cli.writers.modelcompose import (Composition, ModelComposeWriter, check_composition, check_finite,
                                           check_folder_name, check_loader_keys, verify_written, write_modelcompose)
from tests.fixtures.modelcompose import SET, make_modelcompose_set, make_modelcompose_specialist
from tests.fixtures.tiny import make_lora_specialist
from tests.reference import rel_err, ssam_reference

R, ALPHA = 4, 8
PROJ_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@pytest.fixture
def mc(tmp_path: Path) -> Path:
    """base + vision (DAMC), audio (NaiveMC), point (DAMC), rank 4, alpha 8."""
    return make_modelcompose_set(tmp_path, r=R, alpha=ALPHA)


def _specialists(root: Path, encoders: dict | None = None) -> list[NamedSource]:
    return [NamedSource(name, open_source(root / name, encoders=(encoders or {}).get(name))) for name, *_ in SET]


def _merge(comp: Composition, method: str, **params) -> dict[str, LowRankDelta]:
    """What the engine does per weight: one delta per specialist, float32, through the registered method."""
    spec = REGISTRY[method]
    first = comp.specialists[0][1]
    out = {}
    for weight in first.lowrank:
        deltas = [s.read_lowrank(weight).to("cpu", torch.float32) for _, s in comp.specialists]
        ctx = MergeContext(weight, len(deltas), torch.device("cpu"), torch.Generator().manual_seed(0))
        out[weight] = spec.merge(deltas, [1.0] * len(deltas), spec.params.model_validate(params), ctx).delta
    return out


def _write(mc: Path, method: str = "ssam", dtype: torch.dtype = torch.float32, safetensors: bool = False,
           name: str = "out-multimodal", **params):
    comp = check_composition(mc / name, _specialists(mc))
    merged = _merge(comp, method, **params)
    folder = mc / name
    folder.mkdir()
    writer = ModelComposeWriter(folder, comp, dtype, safetensors)
    for weight, delta in merged.items():
        writer.add(weight, delta)
    writer.close()
    return comp, writer.result, folder


def _dense64(d: LowRankDelta) -> torch.Tensor:
    """ΔW in float64 from the stored factors (bf16 `dense()` would round the reference itself)."""
    return d.scale * d.B.double() @ d.A.double()


def _written_delta(out: dict[str, torch.Tensor], config: dict, weight: str, adapter: str = "default") -> torch.Tensor:
    module = weight[: -len(".weight")]
    B, A = out[f"{module}.lora_B.{adapter}.weight"].double(), out[f"{module}.lora_A.{adapter}.weight"].double()
    return config["lora_alpha"] / config["lora_r"] * B @ A


def test_merged_default_lora_equals_the_float64_ssam_reference(mc):
    comp, result, folder = _write(mc, "ssam", rank=R)
    out = load_tensor_dict(folder / "adapter_model.bin")
    config = json.loads((folder / "config.json").read_text())
    assert (config["lora_r"], config["lora_alpha"]) == (R, ALPHA) and result.notes == []
    for weight in comp.specialists[0][1].lowrank:
        dense = [_dense64(s.read_lowrank(weight)) for _, s in comp.specialists]
        ref = ssam_reference(dense, k=R, lam=1 / 3)
        assert rel_err(_written_delta(out, config, weight), ref) < 1e-5, weight  # float32 storage


def test_bf16_output_stays_within_bf16_rounding_of_the_reference(mc):
    comp, _, folder = _write(mc, "ssam", dtype=torch.bfloat16, rank=R)
    out = load_tensor_dict(folder / "adapter_model.bin")
    config = json.loads((folder / "config.json").read_text())
    weight = "model.layers.1.mlp.down_proj.weight"
    assert out[weight.replace(".weight", ".lora_B.default.weight")].dtype == torch.bfloat16
    ref = ssam_reference([_dense64(s.read_lowrank(weight)) for _, s in comp.specialists], k=R, lam=1 / 3)
    assert rel_err(_written_delta(out, config, weight), ref) < 1e-2


def test_every_kept_tensor_is_byte_identical_to_its_source(mc):
    comp, result, folder = _write(mc, "ssam", dtype=torch.bfloat16, rank=R)
    out = load_tensor_dict(folder / "adapter_model.bin")
    for name, src in comp.specialists:
        stored = torch.load(mc / name / "adapter_model.bin", weights_only=True)
        assert set(result.modalities[name]["tensors"]) == set(src.tensors)
        for key in src.tensors:
            source_key = key.replace(f".{src.modality}.", ".default.") if src.variant == "NaiveMC" and ".lora_" in key \
                else key
            a, b = out[key], stored[source_key]
            assert a.dtype == b.dtype and a.shape == b.shape
            assert torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)), key


def test_written_keys_are_exactly_what_modelcompose_builds_for_the_composed_config(mc):
    """Re-derive the loader's parameter names from the written config.json, as its infer_modals does."""
    _, _, folder = _write(mc, "ssam", rank=R)
    out = load_tensor_dict(folder / "adapter_model.bin")
    config = json.loads((folder / "config.json").read_text())
    adapters = ["default"] + [m for k, m in (("mm_audio_encoder", "audio"), ("mm_vision_tower", "vision"),
                                             ("mm_video_encoder", "video"), ("mm_point_encoder", "point"))
                              if config.get(k)]
    assert sorted(adapters) == ["audio", "default", "point", "vision"]
    built = {f"model.layers.{layer}.{proj}.lora_{side}.{adapter}.weight" for layer in range(config["num_hidden_layers"])
             for proj in PROJ_NAMES for side in "AB" for adapter in adapters}
    lora_written = {k for k in out if ".lora_" in k}
    assert lora_written == built
    for key in lora_written:
        assert (out[key].shape[0] if ".lora_A." in key else out[key].shape[1]) == config["lora_r"]
    tokens = {k for k in out if k.endswith(("_tokens.vision", "_tokens.point", "_tokens.audio"))}
    assert tokens == {"prefix_tokens.vision", "suffix_tokens.vision", "prefix_tokens.point", "suffix_tokens.point"}
    for t in tokens:
        assert out[t].shape == (1, config[f"local_{t.split('.')[1]}_{t.split('_')[0]}_tokens"], config["hidden_size"])
    assert {k.split(".")[2] for k in out if k.startswith("model.modal_projectors.")} == {"vision", "audio", "point"}


def test_composed_config_carries_every_modality(mc):
    specialists = _specialists(mc, encoders={"audio": {"mm_audio_encoder": "/data/beats.pt"}})
    comp = check_composition(mc / "out-multimodal", specialists)
    folder = mc / "out-multimodal"
    folder.mkdir()
    write_modelcompose(folder, comp, _merge(comp, "ssam", rank=R), {}, torch.float32)
    config = json.loads((folder / "config.json").read_text())
    assert config["lora_strategy"] == "modal+language"
    assert config["mm_vision_tower"] == config["mm_vision_encoder"] == "/home/author/models/clip-vit-large-patch14-336"
    assert config["mm_audio_encoder"] == "/data/beats.pt"
    assert config["mm_point_encoder"] == "/home/author/model/PointLLM/point_bert_v1.2.pt"
    assert config.get("mm_video_encoder") is None
    assert (config["mm_projector_type"], config["mm_audio_projector_type"], config["mm_point_projector_type"]) == \
        ("mlp2x_gelu", "qformer_32N_2L", "mlp2x_gelu")
    assert (config["mm_hidden_size"], config["mm_audio_hidden_size"], config["mm_point_hidden_size"]) == (24, 20, 16)
    # NaiveMC audio was trained without prefix/suffix tokens: the composed model must not invent them
    assert config["local_prefix_tokens"] == 5 and config["local_audio_prefix_tokens"] == 0
    assert config["local_vision_suffix_tokens"] == config["local_point_suffix_tokens"] == 5
    assert config["model_type"] == "multimodal" and config["num_hidden_layers"] == 2


def test_a_result_above_lora_r_is_stored_exactly_at_a_larger_rank_with_alpha_scaled(mc):
    """Task arithmetic on three rank-4 LoRAs is rank 12: lora_r 12, lora_alpha 24, the same scale 2."""
    comp, result, folder = _write(mc, "task_arithmetic")
    out = load_tensor_dict(folder / "adapter_model.bin")
    config = json.loads((folder / "config.json").read_text())
    assert (config["lora_r"], config["lora_alpha"]) == (12, 24) == (result.lora_r, result.lora_alpha)
    assert any("lora_r raised from 4 to 12" in n for n in result.notes)
    for weight in comp.specialists[0][1].lowrank:
        exact = sum(_dense64(s.read_lowrank(weight)) for _, s in comp.specialists)
        assert rel_err(_written_delta(out, config, weight), exact) < 1e-6
    # modality LoRAs: zero-padded, so their ΔW at the new rank and alpha is unchanged
    vision = comp.specialists[0][1]
    key_a = "model.layers.0.mlp.up_proj.lora_A.vision.weight"
    assert out[key_a].shape[0] == 12 and torch.equal(out[key_a][:R], vision.read(key_a))
    assert not out[key_a][R:].any()
    before = vision.scale * vision.read(key_a.replace("lora_A", "lora_B")).double() @ vision.read(key_a).double()
    assert torch.equal(_written_delta(out, config, "model.layers.0.mlp.up_proj.weight", "vision"), before)


def test_a_result_below_lora_r_is_zero_padded_to_lora_r(mc):
    comp, result, folder = _write(mc, "ssam", rank=2)
    out = load_tensor_dict(folder / "adapter_model.bin")
    config = json.loads((folder / "config.json").read_text())
    assert config["lora_r"] == R and result.notes == []
    key = "model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert out[key].shape[0] == R and not out[key][2:].any()
    weight = "model.layers.0.self_attn.q_proj.weight"
    ref = ssam_reference([_dense64(s.read_lowrank(weight)) for _, s in comp.specialists], k=2, lam=1 / 3)
    assert rel_err(_written_delta(out, config, weight), ref) < 1e-5


def test_safetensors_variant_holds_the_same_tensors(mc, tmp_path):
    _, _, bin_folder = _write(mc, "ssam", dtype=torch.bfloat16, rank=R)
    _, result, st_folder = _write(mc, "ssam", dtype=torch.bfloat16, safetensors=True, name="st-multimodal", rank=R)
    assert result.files == ["config.json", "adapter_model.safetensors"]
    assert not (st_folder / "adapter_model.bin").exists()
    a, b = load_tensor_dict(bin_folder / "adapter_model.bin"), load_file(str(st_folder / "adapter_model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert (bin_folder / "config.json").read_text() == (st_folder / "config.json").read_text()


@pytest.mark.parametrize("name, ok", [("merged-multimodal", True), ("SSAM-MultiModal-4", True),
                                      ("merged", False), ("llava-multimodal", False)])
def test_folder_name_must_contain_multimodal_and_not_llava(tmp_path, name, ok):
    if ok:
        check_folder_name(tmp_path / name)
        return
    with pytest.raises(UserError, match="output.path") as e:
        check_folder_name(tmp_path / name)
    assert ("merged-multimodal" in str(e.value)) if name == "merged" else ("'llava'" in str(e.value))


def test_a_checkpoint_folder_is_named_after_its_parent_as_the_loader_does(tmp_path):
    check_folder_name(tmp_path / "ssam-multimodal" / "checkpoint-1")
    with pytest.raises(UserError):
        check_folder_name(tmp_path / "ssam" / "checkpoint-1")


def test_composition_refuses_a_non_modelcompose_specialist(mc):
    make_lora_specialist(mc / "peft", seed=9)
    specialists = _specialists(mc) + [NamedSource("peft", open_source(mc / "peft"))]
    with pytest.raises(UserError, match="specialist 'peft' .* is a lora checkpoint"):
        check_composition(mc / "out-multimodal", specialists)


def test_composition_refuses_two_specialists_of_one_modality(mc):
    make_modelcompose_specialist(mc / "vision2", "vision", "naivemc", seed=7)
    specialists = _specialists(mc) + [NamedSource("vision2", open_source(mc / "vision2"))]
    with pytest.raises(UserError, match="'vision' and 'vision2' both bring the vision modality"):
        check_composition(mc / "out-multimodal", specialists)


def test_composition_refuses_different_lora_scales(mc):
    make_modelcompose_specialist(mc / "video", "video", "damc", seed=7, r=R, alpha=16)
    specialists = _specialists(mc) + [NamedSource("video", open_source(mc / "video"))]
    with pytest.raises(UserError, match="specialist 'video': lora_alpha/lora_r = 16/4 differs"):
        check_composition(mc / "out-multimodal", specialists)


def test_composition_accepts_a_different_rank_at_the_same_scale_and_pads_it(mc):
    make_modelcompose_specialist(mc / "video", "video", "damc", seed=7, r=8, alpha=16)
    specialists = _specialists(mc) + [NamedSource("video", open_source(mc / "video"))]
    comp = check_composition(mc / "out-multimodal", specialists)
    assert comp.lora_r == 8 and comp.scale == 2.0


def test_composition_refuses_a_different_decoder(mc):
    config = json.loads((mc / "point" / "config.json").read_text())
    (mc / "point" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 32}))
    with pytest.raises(UserError, match="specialist 'point': config.json num_hidden_layers = 32"):
        check_composition(mc / "out-multimodal", _specialists(mc))


def test_key_check_refuses_an_adapter_the_loader_would_not_build(mc):
    comp = check_composition(mc / "out-multimodal", _specialists(mc))
    good = {"model.layers.0.self_attn.q_proj.lora_A.vision.weight": torch.zeros(R, 32)}
    check_loader_keys(good, comp, R)
    for key, t in {"model.layers.0.self_attn.q_proj.lora_A.video.weight": torch.zeros(R, 32),
                   "model.layers.2.self_attn.q_proj.lora_A.default.weight": torch.zeros(R, 32),
                   "model.layers.0.self_attn.q_proj.lora_A.default.weight": torch.zeros(R + 1, 32),
                   "prefix_tokens.video": torch.zeros(1, 5, 32)}.items():
        with pytest.raises(RuntimeError, match="not a parameter ModelCompose builds"):
            check_loader_keys({key: t}, comp, R)


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_read_back_check_catches_missing_and_unexpected_keys_and_wrong_shapes(tmp_path, suffix):
    from safetensors.torch import save_file

    path = tmp_path / f"adapter_model{suffix}"
    tensors = {"prefix_tokens.vision": torch.zeros(1, 5, 32)}
    torch.save(tensors, path) if suffix == ".bin" else save_file(tensors, str(path))
    verify_written(path, {"prefix_tokens.vision": (1, 5, 32)})
    with pytest.raises(RuntimeError, match=r"missing \['suffix_tokens.vision'\]"):
        verify_written(path, {"prefix_tokens.vision": (1, 5, 32), "suffix_tokens.vision": (1, 5, 32)})
    with pytest.raises(RuntimeError, match=r"unexpected \['prefix_tokens.vision'\]"):
        verify_written(path, {})
    with pytest.raises(RuntimeError, match="has shape"):
        verify_written(path, {"prefix_tokens.vision": (1, 4, 32)})


def test_non_finite_kept_values_are_refused_before_anything_is_written(mc):
    comp = check_composition(mc / "out-multimodal", _specialists(mc))
    folder = mc / "out-multimodal"
    folder.mkdir()
    bad = {"vision": {"prefix_tokens.vision": torch.full((1, 5, 32), float("inf"), dtype=torch.bfloat16)}}
    with pytest.raises(UserError, match="prefix_tokens.vision has non-finite values"):
        write_modelcompose(folder, comp, {}, bad, torch.bfloat16)
    assert not (folder / "adapter_model.bin").exists()
    check_finite({"x": torch.zeros(2), "ids": torch.tensor([1, 2])})


def test_the_writer_defaults_to_the_specialists_lora_dtype(mc):
    comp = check_composition(mc / "out-multimodal", _specialists(mc))
    assert ModelComposeWriter(mc, comp).dtype == torch.bfloat16


def test_a_kept_view_is_written_compactly_not_with_its_whole_base_storage(mc):
    comp = check_composition(mc / "out-multimodal", _specialists(mc))
    big = torch.randn(1000, 5, 32).to(torch.bfloat16)
    folder = mc / "out-multimodal"
    folder.mkdir()
    write_modelcompose(folder, comp, _merge(comp, "ssam", rank=R), {"vision": {"prefix_tokens.vision": big[3:4]}},
                       torch.bfloat16)
    assert (folder / "adapter_model.bin").stat().st_size < big.nbytes / 4
    assert torch.equal(load_tensor_dict(folder / "adapter_model.bin")["prefix_tokens.vision"], big[3:4])
