from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from ssam_cli.deltas import LowRankDelta
from ssam_cli.errors import UserError
from ssam_cli.methods import REGISTRY
from ssam_cli.methods.base import MergeContext
from ssam_cli.plan import NamedSource
from ssam_cli.sources import open_source
from ssam_cli.sources.modelcompose import load_tensor_dict
from ssam_cli.writers.modelcompose import (Composition, ModelComposeWriter, check_composition, check_folder_name,
                                           check_loadable, check_loader_keys, verify_written, write_modelcompose)
from tests.fixtures.modelcompose import (PAPER_SET, SET, make_modelcompose_set, make_modelcompose_specialist,
                                         multimodal_model)
from tests.fixtures.tiny import make_lora_specialist
from tests.reference import rel_err, ssam_reference

R, ALPHA = 4, 8
BASE_WEIGHT = re.compile(r"^model\.layers\.\d+\.(self_attn|mlp)\.[a-z]+_proj\.weight$")  # frozen: from the base


@pytest.fixture
def mc(tmp_path: Path) -> Path:
    """base + vision (DAMC), video (NaiveMC, no local tokens), point (DAMC), rank 4, alpha 8."""
    return make_modelcompose_set(tmp_path, r=R, alpha=ALPHA)


@pytest.fixture
def paper(tmp_path: Path) -> Path:
    """base + vision (DAMC), audio (NaiveMC, Q-Former projector), video (DAMC), point (DAMC)."""
    return make_modelcompose_set(tmp_path, r=R, alpha=ALPHA, specialists=PAPER_SET)


def _specialists(root: Path, encoders: dict | None = None, names=SET) -> list[NamedSource]:
    return [NamedSource(name, open_source(root / name, encoders=(encoders or {}).get(name))) for name, *_ in names]


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


def _write(mc: Path, method: str = "ssam", dtype: torch.dtype = torch.float32, name: str = "out-multimodal",
           names=SET, **params):
    comp = check_composition(mc / name, _specialists(mc, names=names))
    merged = _merge(comp, method, **params)
    folder = mc / name
    folder.mkdir()
    writer = ModelComposeWriter(folder, comp, dtype)
    for weight, delta in merged.items():
        writer.add(weight, delta)
    writer.close(_averaged(comp))
    return comp, writer.result, folder


def _averaged(comp: Composition) -> dict[str, torch.Tensor]:
    """The shared `default` tokens' averages as the engine hands them over (plan role `average`), float32."""
    sources = dict(comp.specialists)
    return {key: torch.stack([sources[n].read(key).float() for n in names]).mean(0)
            for key, names in comp.shared.items()}


def _kept(comp: Composition, **replace: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """What the writer reads from each specialist at close, with some of the vision specialist's tensors replaced."""
    kept = {name: {key: src.read(key) for key in src.tensors} for name, src in comp.specialists}
    kept["vision"].update(replace)
    return kept


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
    assert (config["lora_r"], config["lora_alpha"]) == (R, ALPHA) and not any("lora_r" in n for n in result.notes)
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


def _load_as_modelcompose(folder: Path) -> tuple[torch.nn.Module, dict[str, torch.Tensor], list[str], list[str]]:
    """What load_pretrained_model does with the folder: build the model from config.json (here the fixture's module
    tree, built independently of ssam's layout), read adapter_model.bin, cast to float16, load with strict=False."""
    config = json.loads((folder / "config.json").read_text())
    model = multimodal_model(config)
    weights = {k: v.to(torch.float16) for k, v in torch.load(folder / "adapter_model.bin", weights_only=True).items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    return model, weights, missing, unexpected


def test_the_composed_file_loads_whole_into_the_model_built_from_its_config(paper):
    """Nothing the loader builds is left freshly initialised and nothing written is dropped: the only parameters
    the file does not hold are the frozen decoder weights, which come from the base."""
    _, _, folder = _write(paper, "ssam", dtype=torch.bfloat16, names=PAPER_SET, rank=R)
    model, weights, missing, unexpected = _load_as_modelcompose(folder)
    assert unexpected == []
    assert missing and all(BASE_WEIGHT.match(k) for k in missing)
    out = load_tensor_dict(folder / "adapter_model.bin")
    assert set(out) == {n for n in dict(model.named_parameters()) if not BASE_WEIGHT.match(n)}
    assert out["prefix_tokens.audio"].shape == (1, 0, 32) == out["suffix_tokens.audio"].shape  # NaiveMC: 0 tokens
    assert {"prefix_tokens.default", "suffix_tokens.default"} <= set(out)
    assert out["model.modal_projectors.audio.audio_llama_proj.weight"].shape == (4096, 768)
    assert all(torch.isfinite(w).all() for w in weights.values())  # the float16 cast produced no inf


def test_default_tokens_are_written_from_the_averages_handed_over_cast_once(mc):
    comp, result, folder = _write(mc, "ssam", dtype=torch.bfloat16, rank=R)
    out = load_tensor_dict(folder / "adapter_model.bin")
    for kind in ("prefix", "suffix"):
        key = f"{kind}_tokens.default"
        held = [load_tensor_dict(mc / name / "adapter_model.bin")[key].double() for name in ("vision", "point")]
        assert comp.shared[key] == ("vision", "point")  # NaiveMC video was trained without tokens
        assert out[key].dtype == torch.bfloat16
        assert torch.equal(out[key], ((held[0] + held[1]) / 2).to(torch.bfloat16))  # exact mean, rounded once
    assert result.modalities["vision"]["averaged"] == ["prefix_tokens.default", "suffix_tokens.default"]
    assert result.modalities["video"]["averaged"] == []
    assert any("averaged over the specialists" in n for n in result.notes)
    assert any(n.startswith("prefix_tokens.video, suffix_tokens.video: zero-size") for n in result.notes)


def test_a_projector_the_union_of_configs_would_build_differently_is_refused(mc):
    """Without mm_point_hidden_size a point projector is sized by mm_hidden_size: alone the point specialist loads
    (mm_hidden_size 768), but in the union of configs the vision specialist's mm_hidden_size (24) comes first."""
    make_modelcompose_specialist(mc / "point", "point", "damc", seed=3, config_changes={"mm_point_hidden_size": 768})
    config = json.loads((mc / "point" / "config.json").read_text())
    del config["mm_point_hidden_size"]
    (mc / "point" / "config.json").write_text(json.dumps({**config, "mm_hidden_size": 768}))
    assert open_source(mc / "point").tensors["model.modal_projectors.point.0.weight"].shape == (32, 768)
    with pytest.raises(UserError, match=r"specialist 'point': model.modal_projectors.point.0.weight \(32, 768\): "
                                        r"the composed model's config.json builds \(32, 24\)"):
        check_composition(mc / "out-multimodal", _specialists(mc))


def test_composed_config_carries_every_modality(mc):
    specialists = _specialists(mc, encoders={"video": {"mm_video_encoder": "/data/LanguageBind_Video_merge"}})
    comp = check_composition(mc / "out-multimodal", specialists)
    folder = mc / "out-multimodal"
    folder.mkdir()
    write_modelcompose(folder, comp, _merge(comp, "ssam", rank=R), _kept(comp), _averaged(comp), torch.float32)
    config = json.loads((folder / "config.json").read_text())
    assert config["lora_strategy"] == "modal+language"
    assert config["mm_vision_tower"] == config["mm_vision_encoder"] == "/home/author/models/clip-vit-large-patch14-336"
    assert config["mm_video_encoder"] == "/data/LanguageBind_Video_merge"
    assert config["mm_point_encoder"] == "/home/author/model/PointLLM/point_bert_v1.2.pt"
    assert config.get("mm_audio_encoder") is None
    assert (config["mm_projector_type"], config["mm_video_projector_type"], config["mm_point_projector_type"]) == \
        ("mlp2x_gelu", "mlp2x_gelu", "mlp2x_gelu")
    assert (config["mm_hidden_size"], config["mm_video_hidden_size"], config["mm_point_hidden_size"]) == (24, 24, 16)
    # NaiveMC video was trained without prefix/suffix tokens: its count is 0 (zero-size parameters), the default 5
    assert config["local_prefix_tokens"] == 5 and config["local_video_prefix_tokens"] == 0
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
    assert config["lora_r"] == R and not any("lora_r" in n for n in result.notes)
    key = "model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert out[key].shape[0] == R and not out[key][2:].any()
    weight = "model.layers.0.self_attn.q_proj.weight"
    ref = ssam_reference([_dense64(s.read_lowrank(weight)) for _, s in comp.specialists], k=2, lam=1 / 3)
    assert rel_err(_written_delta(out, config, weight), ref) < 1e-5


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
    with pytest.raises(UserError, match="specialist 'video': lora_alpha/lora_r = 16/4 differs"):
        check_composition(mc / "out-multimodal", _specialists(mc))


def test_composition_accepts_a_different_rank_at_the_same_scale_and_pads_it(mc):
    make_modelcompose_specialist(mc / "video", "video", "damc", seed=7, r=8, alpha=16)
    comp = check_composition(mc / "out-multimodal", _specialists(mc))
    assert comp.lora_r == 8 and comp.scale == 2.0


def test_composition_refuses_a_different_decoder(mc):
    config = json.loads((mc / "point" / "config.json").read_text())
    (mc / "point" / "config.json").write_text(json.dumps({**config, "vocab_size": 32000}))
    with pytest.raises(UserError, match="specialist 'point': config.json vocab_size = 32000"):
        check_composition(mc / "out-multimodal", _specialists(mc))


def test_key_check_fails_on_one_misspelt_missing_or_misshapen_key(paper):
    comp = check_composition(paper / "out-multimodal", _specialists(paper, names=PAPER_SET))
    built = comp.built(R)
    good = {k: torch.zeros(shape) for k, shape in built.items()}
    check_loader_keys(good, built)
    key = "model.modal_projectors.audio.audio_Qformer.bert.encoder.layer.1.crossattention.self.key.weight"
    misspelt = {(k.replace("crossattention", "cross_attention") if k == key else k): v for k, v in good.items()}
    with pytest.raises(RuntimeError, match=r"unexpected \['model.*cross_attention.self.key.weight'\]; missing"):
        check_loader_keys(misspelt, built)
    with pytest.raises(RuntimeError, match=r"missing \['prefix_tokens.audio'\]"):
        check_loader_keys({k: v for k, v in good.items() if k != "prefix_tokens.audio"}, built)
    with pytest.raises(RuntimeError, match=r"misshapen \['model.layers.0.self_attn.q_proj.lora_A.vision.weight'\]"):
        check_loader_keys({**good, "model.layers.0.self_attn.q_proj.lora_A.vision.weight": torch.zeros(R + 1, 32)},
                          built)


def test_read_back_check_catches_missing_and_unexpected_keys_and_wrong_shapes(tmp_path):
    path = tmp_path / "adapter_model.bin"
    torch.save({"prefix_tokens.vision": torch.zeros(1, 5, 32)}, path)
    verify_written(path, {"prefix_tokens.vision": (1, 5, 32)})
    with pytest.raises(RuntimeError, match=r"missing \['suffix_tokens.vision'\]"):
        verify_written(path, {"prefix_tokens.vision": (1, 5, 32), "suffix_tokens.vision": (1, 5, 32)})
    with pytest.raises(RuntimeError, match=r"unexpected \['prefix_tokens.vision'\]"):
        verify_written(path, {})
    with pytest.raises(RuntimeError, match="has shape"):
        verify_written(path, {"prefix_tokens.vision": (1, 4, 32)})


@pytest.mark.parametrize("value, message", [(float("inf"), "has non-finite values"),
                                            (7.0e4, r"has values up to 70144, beyond float16's ±65504")])
def test_values_the_float16_loader_cannot_hold_are_refused_before_anything_is_written(mc, value, message):
    comp = check_composition(mc / "out-multimodal", _specialists(mc))
    folder = mc / "out-multimodal"
    folder.mkdir()
    bad = torch.zeros(1, 5, 32, dtype=torch.bfloat16)
    bad[0, 2, 7] = value  # bf16 holds 7e4 (as 70144); float16 would turn it into inf
    kept = _kept(comp, **{"prefix_tokens.vision": bad})
    with pytest.raises(UserError, match=rf"prefix_tokens.vision {message}.*specialist 'vision'"):
        write_modelcompose(folder, comp, _merge(comp, "ssam", rank=R), kept, _averaged(comp), torch.bfloat16)
    assert not (folder / "adapter_model.bin").exists() and not (folder / "config.json").exists()
    check_loadable({"x": torch.zeros(2), "ids": torch.tensor([1, 2]), "empty": torch.zeros(1, 0, 3)}, {})


def test_the_writer_defaults_to_the_specialists_lora_dtype(mc):
    comp = check_composition(mc / "out-multimodal", _specialists(mc))
    assert ModelComposeWriter(mc, comp).dtype == torch.bfloat16


def test_a_kept_view_is_written_compactly_not_with_its_whole_base_storage(mc):
    comp = check_composition(mc / "out-multimodal", _specialists(mc))
    big = torch.randn(1000, 5, 32).to(torch.bfloat16)
    folder = mc / "out-multimodal"
    folder.mkdir()
    write_modelcompose(folder, comp, _merge(comp, "ssam", rank=R), _kept(comp, **{"prefix_tokens.vision": big[3:4]}),
                       _averaged(comp), torch.bfloat16)
    written = load_tensor_dict(folder / "adapter_model.bin")["prefix_tokens.vision"]
    assert torch.equal(written, big[3:4]) and written.untyped_storage().nbytes() == big[3:4].nbytes
