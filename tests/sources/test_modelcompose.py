from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssam_cli.errors import InputError
from ssam_cli.sources import open_source
from ssam_cli.sources.modelcompose import ModelComposeSpecialist, is_modelcompose, load_tensor_dict
from tests.fixtures.modelcompose import make_modelcompose_specialist
from tests.fixtures.tiny import HIDDEN, INTER, make_base, make_lora_specialist

Q0 = "model.layers.0.self_attn.q_proj"
DOWN1 = "model.layers.1.mlp.down_proj"


def _stored(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "adapter_model.bin", weights_only=True)


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_damc_default_lora_is_the_language_delta_and_everything_else_is_kept(tmp_path):
    folder = make_modelcompose_specialist(tmp_path / "v", "vision", "damc", seed=1, r=4, alpha=8)
    src = open_source(folder)
    stored = _stored(folder)
    assert isinstance(src, ModelComposeSpecialist) and src.kind == "modelcompose"
    assert set(src.lowrank) == {k.replace(".lora_A.default", "") for k in stored if ".lora_A.default." in k}
    assert src.lowrank[f"{DOWN1}.weight"].shape == (HIDDEN, INTER) and src.lowrank[f"{DOWN1}.weight"].rank == 4
    d = src.read_lowrank(f"{DOWN1}.weight")
    assert d.scale == 2.0  # lora_alpha / lora_r from config.json
    assert torch.equal(d.B, stored[f"{DOWN1}.lora_B.default.weight"])
    assert torch.equal(d.A, stored[f"{DOWN1}.lora_A.default.weight"])
    # the `default` tokens are shared (averaged across specialists); every other key is kept: modality LoRA,
    # projector, the modality's prefix/suffix tokens
    assert set(src.shared) == {"prefix_tokens.default", "suffix_tokens.default"}
    assert set(src.tensors) == {k for k in stored if ".default." not in k} - set(src.shared)
    assert torch.equal(src.read("prefix_tokens.default"), stored["prefix_tokens.default"])
    assert {"prefix_tokens.vision", "suffix_tokens.vision", f"{Q0}.lora_A.vision.weight",
            "model.modal_projectors.vision.0.weight"} <= set(src.tensors)
    assert src.tensors["prefix_tokens.vision"].shape == (1, 5, HIDDEN)
    assert src.tensors["prefix_tokens.vision"].dtype == torch.bfloat16
    assert torch.equal(src.read(f"{Q0}.lora_B.vision.weight"), stored[f"{Q0}.lora_B.vision.weight"])


def test_naivemc_modality_lora_is_its_own_default_lora(tmp_path):
    """NaiveMC trained its modality tokens through `default`; a modal+language model routes them through the
    modality's adapter, so that adapter must carry the same bytes."""
    folder = make_modelcompose_specialist(tmp_path / "a", "audio", "naivemc", seed=2)
    src = open_source(folder)
    stored = _stored(folder)
    assert not any(".lora_" in k and ".audio." in k for k in stored)
    assert src.describe()["variant"] == "NaiveMC" and src.lora_strategy == "same"
    for side in "AB":
        kept = src.read(f"{Q0}.lora_{side}.audio.weight")
        assert torch.equal(kept.view(torch.int16), stored[f"{Q0}.lora_{side}.default.weight"].view(torch.int16))
    assert {k for k in src.tensors if ".lora_" in k} == {k.replace(".default.", ".audio.") for k in stored
                                                         if ".default." in k}
    assert src.token_count("prefix") == 0


QFORMER = "model.modal_projectors.audio.audio_Qformer.bert"


def test_the_real_audio_qformer_projector_is_kept_whole_with_its_names_and_shapes(tmp_path):
    """qformer_32N_2L on a 20-wide audio encoder: Video-LLaMA's Q-Former, 768 wide, cross-attention in both layers."""
    src = open_source(make_modelcompose_specialist(tmp_path / "a", "audio", "naivemc", seed=2))
    shapes = {k: v.shape for k, v in src.tensors.items()}
    assert shapes["model.modal_projectors.audio.audio_query_tokens"] == (1, 32, 768)
    assert shapes[f"{QFORMER}.embeddings.LayerNorm.weight"] == (768,)
    assert shapes[f"{QFORMER}.encoder.layer.1.crossattention.self.key.weight"] == (768, 20)
    assert shapes[f"{QFORMER}.encoder.layer.1.attention.self.key.weight"] == (768, 768)
    assert shapes[f"{QFORMER}.encoder.layer.0.intermediate_query.dense.weight"] == (3072, 768)
    assert shapes[f"{QFORMER}.encoder.layer.0.output_query.LayerNorm.bias"] == (768,)
    assert shapes["model.modal_projectors.audio.audio_llama_proj.weight"] == (4096, 768)
    assert shapes["model.modal_projectors.audio.audio_position_embedding.weight"] == (1024, 20)
    assert not any(".layer.2." in k or ".intermediate." in k for k in shapes)
    assert src.shared == {} and not any("_tokens." in k and "query" not in k for k in shapes)  # NaiveMC: 0 tokens


def test_a_misspelt_or_missing_qformer_key_is_named(tmp_path):
    good = f"{QFORMER}.encoder.layer.0.intermediate_query.dense.weight"
    folder = make_modelcompose_specialist(tmp_path / "a", "audio", "naivemc", seed=2)
    stored = _stored(folder)
    torch.save({(k.replace("intermediate_query", "intermediate") if k == good else k): v
                for k, v in stored.items()}, folder / "adapter_model.bin")
    with pytest.raises(InputError, match=r"layer.0.intermediate.dense.weight: not a parameter ModelCompose builds "
                                         r"for this config.json \(NaiveMC .*projector qformer_32N_2L"):
        open_source(folder)
    torch.save({k: v for k, v in stored.items() if k != good}, folder / "adapter_model.bin")
    with pytest.raises(InputError, match=rf"{good} is missing: ModelCompose's training saves it"):
        open_source(folder)


def test_a_qformer_projector_of_another_depth_than_its_config_is_named(tmp_path):
    folder = make_modelcompose_specialist(tmp_path / "a", "audio", "naivemc", seed=2)
    _edit_config(folder, mm_audio_projector_type="qformer_32N_1L")
    with pytest.raises(InputError, match=r"encoder.layer.1.attention.self.query.weight: not a parameter"):
        open_source(folder)


def test_an_unknown_projector_type_is_named(tmp_path):
    folder = make_modelcompose_specialist(tmp_path / "p", "point")
    _edit_config(folder, mm_point_projector_type="resampler")
    with pytest.raises(InputError, match=r"config.json: mm_point_projector_type: 'resampler' is not a projector type"):
        open_source(folder)


def test_default_tokens_of_a_naivemc_specialist_trained_with_local_tokens_are_shared(tmp_path):
    src = open_source(make_modelcompose_specialist(tmp_path / "v", "video", "naivemc", tokens=3))
    assert {k: v.shape for k, v in src.shared.items()} == {"prefix_tokens.default": (1, 3, HIDDEN),
                                                          "suffix_tokens.default": (1, 3, HIDDEN)}
    assert src.token_count("suffix") == 3 and src.token_count("prefix", "default") == 3


def test_default_tokens_missing_from_a_specialist_trained_with_tokens_are_named(tmp_path):
    folder = make_modelcompose_specialist(tmp_path / "v", "vision", drop=["suffix_tokens.default"])
    with pytest.raises(InputError, match="suffix_tokens.default is missing"):
        open_source(folder)


def test_describe_reports_modality_strategy_encoder_and_projector(tmp_path):
    d = open_source(make_modelcompose_specialist(tmp_path / "p", "point", "damc")).describe()
    assert d["modality"] == "point" and d["lora_strategy"] == "modal+language" and d["variant"] == "DAMC"
    assert d["encoders"] == {"mm_point_encoder": "/home/author/model/PointLLM/point_bert_v1.2.pt"}
    assert d["projector_type"] == "mlp2x_gelu" and (d["lora_r"], d["lora_alpha"]) == (4, 8)


def test_auto_detection_tells_modelcompose_from_base_and_peft_adapter(tmp_path):
    make_base(tmp_path / "base")
    make_lora_specialist(tmp_path / "peft", seed=1)
    make_modelcompose_specialist(tmp_path / "v", "video", "naivemc")
    assert is_modelcompose(tmp_path / "v")
    assert not is_modelcompose(tmp_path / "base") and not is_modelcompose(tmp_path / "peft")
    assert open_source(tmp_path / "base").kind == "full" and open_source(tmp_path / "peft").kind == "lora"


def test_a_llava_lora_folder_is_not_taken_for_modelcompose(tmp_path):
    """LLaVA LoRA folders also hold config.json (with mm_vision_tower) and adapter_model.bin, plus PEFT's config."""
    make_lora_specialist(tmp_path / "llava", seed=1)
    (tmp_path / "llava" / "config.json").write_text(json.dumps({"model_type": "llava_llama", "mm_vision_tower": "x"}))
    torch.save({}, tmp_path / "llava" / "adapter_model.bin")
    assert not is_modelcompose(tmp_path / "llava")


def test_forcing_the_format_on_another_folder_names_what_is_missing(tmp_path):
    make_base(tmp_path / "base")
    with pytest.raises(InputError, match="a ModelCompose specialist is a folder with config.json and adapter_model"):
        open_source(tmp_path / "base", "modelcompose")


def test_a_legacy_format_pickle_is_read_too(tmp_path):
    folder = make_modelcompose_specialist(tmp_path / "v", "vision")
    stored = _stored(folder)
    torch.save(stored, folder / "adapter_model.bin", _use_new_zipfile_serialization=False)
    src = open_source(folder)
    assert torch.equal(src.read("prefix_tokens.vision"), stored["prefix_tokens.vision"])


class _Payload:
    """Unpickling this would create a file: the proof that nothing was executed is that the file is absent."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_holding_a_non_tensor_object_is_refused_without_running_it(tmp_path):
    folder = make_modelcompose_specialist(tmp_path / "v", "vision")
    payload = _Payload()
    payload.marker = tmp_path / "executed"
    torch.save({**_stored(folder), "evil": payload}, folder / "adapter_model.bin")
    with pytest.raises(InputError, match=r"adapter_model.bin: refused to load: .*plain dict of"):
        open_source(folder)
    assert not payload.marker.exists()


@pytest.mark.parametrize("obj, message", [([torch.zeros(2)], "expected a dict of name → tensor, got list"),
                                          ({"step": 3}, "entry 'step' is a int, not a tensor")])
def test_pickle_that_is_not_a_dict_of_tensors_is_refused(tmp_path, obj, message):
    torch.save(obj, tmp_path / "adapter_model.bin")
    with pytest.raises(InputError, match=message):
        load_tensor_dict(tmp_path / "adapter_model.bin")


def test_missing_modality_lora_is_named(tmp_path):
    folder = make_modelcompose_specialist(tmp_path / "v", "vision", "damc",
                                          drop=[f"{DOWN1}.lora_A.vision.weight", f"{DOWN1}.lora_B.vision.weight"])
    with pytest.raises(InputError, match=rf"{DOWN1}.lora_A.vision.weight is missing \(and 1 more\): ModelCompose's "
                                         r"training saves it for this config.json \(DAMC \(lora_strategy "
                                         r"modal\+language\), modality vision, projector mlp2x_gelu, lora_r 4\)"):
        open_source(folder)


def test_modality_lora_of_another_shape_than_the_language_lora_is_named(tmp_path):
    bad = {f"{DOWN1}.lora_A.vision.weight": torch.zeros(4, HIDDEN, dtype=torch.bfloat16),
           f"{DOWN1}.lora_B.vision.weight": torch.zeros(INTER, 4, dtype=torch.bfloat16)}
    folder = make_modelcompose_specialist(tmp_path / "v", "vision", "damc", extra=bad)
    with pytest.raises(InputError, match=rf"{DOWN1}.lora_A.vision.weight has shape \(4, 32\); ModelCompose builds "
                                         r"\(4, 48\) for this config.json"):
        open_source(folder)


def test_half_a_lora_pair_is_named(tmp_path):
    folder = make_modelcompose_specialist(tmp_path / "v", "vision", "damc", drop=[f"{Q0}.lora_B.default.weight"])
    with pytest.raises(InputError, match=rf"{Q0}.lora_B.default.weight is missing: ModelCompose's training saves"):
        open_source(folder)


def test_missing_projector_is_named(tmp_path):
    drop = [f"model.modal_projectors.point.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")]
    folder = make_modelcompose_specialist(tmp_path / "p", "point", "damc", drop=drop)
    with pytest.raises(InputError, match=r"model.modal_projectors.point.0.weight is missing \(and 3 more\)"):
        open_source(folder)


def test_rank_different_from_config_lora_r_is_named(tmp_path):
    folder = make_modelcompose_specialist(tmp_path / "v", "vision", r=4, alpha=8)
    _edit_config(folder, lora_r=8)
    with pytest.raises(InputError, match=rf"{Q0}.lora_A.default.weight has shape \(4, 32\); ModelCompose builds "
                                         r"\(8, 32\) for this config.json \(.*lora_r 8\)"):
        open_source(folder)


def test_lora_factors_that_do_not_chain_are_named(tmp_path):
    bad = {f"{Q0}.lora_B.default.weight": torch.zeros(HIDDEN, 3, dtype=torch.bfloat16)}
    folder = make_modelcompose_specialist(tmp_path / "v", "vision", extra=bad)
    with pytest.raises(InputError, match=r"q_proj.lora_B.default.weight has shape \(32, 3\); ModelCompose builds "
                                         r"\(32, 4\)"):
        open_source(folder)


@pytest.mark.parametrize("key, message", [
    ("prefix_tokens.audio", "belongs to modality 'audio' but config.json sets the vision encoder"),
    (f"{Q0}.lora_A.audio.weight", "adapter 'audio' is not expected"),
    ("model.embed_tokens.weight", "not a ModelCompose adapter key"),
])
def test_keys_that_do_not_belong_to_the_specialist_are_refused(tmp_path, key, message):
    folder = make_modelcompose_specialist(tmp_path / "v", "vision", extra={key: torch.zeros(4, HIDDEN)})
    with pytest.raises(InputError, match=message):
        open_source(folder)


def test_modality_lora_in_a_naivemc_file_is_refused(tmp_path):
    folder = make_modelcompose_specialist(tmp_path / "v", "vision", "naivemc",
                                          extra={f"{Q0}.lora_A.vision.weight": torch.zeros(4, HIDDEN)})
    with pytest.raises(InputError, match="adapter 'vision' is not expected with lora_strategy 'same'"):
        open_source(folder)


@pytest.mark.parametrize("changes, message", [
    ({"mm_vision_tower": None, "mm_vision_encoder": None}, "none is set"),
    ({"mm_audio_encoder": "/x/beats.pt"}, r"several are set \(audio, vision\)"),
    ({"lora_strategy": "modal"}, "lora_strategy: expected one of same, modal\\+language, got 'modal'"),
    ({"lora_alpha": 0}, "lora_alpha: must be a positive number"),
])
def test_config_problems_name_the_file_and_field(tmp_path, changes, message):
    folder = make_modelcompose_specialist(tmp_path / "v", "vision")
    _edit_config(folder, **changes)
    with pytest.raises(InputError, match=message) as e:
        ModelComposeSpecialist(folder)
    assert "config.json" in str(e.value)


def test_encoder_paths_are_remapped_and_both_vision_aliases_follow(tmp_path):
    folder = make_modelcompose_specialist(tmp_path / "v", "vision")
    src = open_source(folder, encoders={"mm_vision_tower": "/data/clip-336"})
    assert src.config["mm_vision_tower"] == src.config["mm_vision_encoder"] == "/data/clip-336"
    assert json.loads((folder / "config.json").read_text())["mm_vision_tower"].startswith("/home/author")


@pytest.mark.parametrize("encoders, message", [({"mm_clip": "/x"}, "encoders: mm_clip: not an encoder key"),
                                               ({"mm_audio_encoder": "/x"}, "config.json sets no mm_audio_encoder")])
def test_bad_encoder_remapping_is_named(tmp_path, encoders, message):
    folder = make_modelcompose_specialist(tmp_path / "v", "vision")
    with pytest.raises(InputError, match=message):
        open_source(folder, encoders=encoders)


def test_encoder_remapping_on_a_peft_adapter_is_refused(tmp_path):
    make_lora_specialist(tmp_path / "peft", seed=1)
    with pytest.raises(InputError, match="encoders: only a ModelCompose specialist"):
        open_source(tmp_path / "peft", encoders={"mm_audio_encoder": "/x"})


def test_files_are_config_and_weights(tmp_path):
    folder = make_modelcompose_specialist(tmp_path / "v", "vision")
    assert open_source(folder).files() == [folder / "config.json", folder / "adapter_model.bin"]
