"""ModelCompose specialists through the whole pipeline: recipe → plan → merge → composed model (or a full model)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ssam_cli.engine import prepare, run_merge
from ssam_cli.errors import RecipeError, UserError
from ssam_cli.recipe import load_recipe
from ssam_cli.sources.modelcompose import load_tensor_dict
from tests.fixtures.modelcompose import PAPER_SET, SET, make_modelcompose_set, multimodal_model
from tests.fixtures.tiny import make_lora_specialist, write_recipe
from tests.reference import rel_err, ssam_reference

R, ALPHA = 4, 8
Q = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture
def mc(tmp_path: Path) -> Path:
    return make_modelcompose_set(tmp_path, r=R, alpha=ALPHA)


def _recipe(mc: Path, out: str = "merged-multimodal", fmt: str = "modelcompose", **fields) -> Path:
    return write_recipe(mc / "recipe.yaml", Path("base"), [(name, Path(name)) for name, *_ in SET],
                        output={"path": out, "format": fmt, "dtype": "float32"}, **fields)


def _language_delta(store: dict[str, torch.Tensor], weight: str, scale: float) -> torch.Tensor:
    stem = weight[: -len(".weight")]
    return scale * store[f"{stem}.lora_B.default.weight"].double() @ store[f"{stem}.lora_A.default.weight"].double()


def test_composed_model_holds_the_ssam_merge_and_every_modality_file_untouched(mc: Path):
    result = run_merge(prepare(load_recipe(_recipe(mc, parameters={"rank": 6}))), show_progress=False)

    out = load_tensor_dict(result.output / "adapter_model.bin")
    config = json.loads((result.output / "config.json").read_text())
    scale = config["lora_alpha"] / config["lora_r"]
    inputs = {name: load_tensor_dict(mc / name / "adapter_model.bin") for name, *_ in SET}
    specialist_deltas = [_language_delta(inputs[name], Q, ALPHA / R) for name, *_ in SET]
    expected = ssam_reference(specialist_deltas, k=6, lam=1 / 3)
    assert rel_err(_language_delta(out, Q, scale), expected) < 1e-5  # float32 output, float64 reference
    assert config["lora_strategy"] == "modal+language" and scale == ALPHA / R

    vision = inputs["vision"]
    untouched = [k for k in vision if ".lora_" not in k and not k.endswith(".default")]  # default tokens: averaged
    assert "prefix_tokens.vision" in untouched and "model.modal_projectors.vision.0.weight" in untouched
    assert all(torch.equal(out[k], vision[k]) for k in untouched)
    modal = f"{Q[: -len('.weight')]}.lora_B.vision.weight"
    rank = config["lora_r"]
    assert torch.equal(out[modal][:, :R], vision[modal]) and not out[modal][:, R:rank].any()  # zero-padded, same ΔW

    manifest = result.manifest.as_json()
    assert set(manifest["modalities"]) == {"vision", "video", "point"}
    assert manifest["modalities"]["vision"]["averaged"] == ["prefix_tokens.default", "suffix_tokens.default"]
    assert manifest["modelcompose"]["lora_r"] == rank
    assert manifest["tensors"][Q]["space"] == "dense" and "spectrum" in manifest
    assert not (result.output / "modalities").exists()  # everything lives in the composed file


def test_the_papers_four_specialists_compose_into_a_model_that_loads_whole(tmp_path: Path):
    """DAMC vision, video, point and NaiveMC audio (Q-Former projector, no local tokens), as ModelCompose saves them:
    the composed file loads, float16-cast and strict=False as ModelCompose's loader does, into the model built from
    its config.json with no key dropped and nothing left freshly initialised but the base's own decoder weights."""
    root = make_modelcompose_set(tmp_path, r=R, alpha=ALPHA, specialists=PAPER_SET)
    recipe = write_recipe(root / "recipe.yaml", Path("base"), [(name, Path(name)) for name, *_ in PAPER_SET],
                          output={"path": "ssam-multimodal", "format": "modelcompose", "dtype": "bfloat16"},
                          parameters={"rank": R})
    result = run_merge(prepare(load_recipe(recipe)), show_progress=False)
    config = json.loads((result.output / "config.json").read_text())
    model = multimodal_model(config)
    weights = {k: v.to(torch.float16) for k, v in load_tensor_dict(result.output / "adapter_model.bin").items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert unexpected == [] and missing and all(re.fullmatch(r"model\.layers\.\d+\.\w+\.\w+_proj\.weight", k)
                                                for k in missing)
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert weights["prefix_tokens.audio"].shape == (1, 0, 32)
    held = [load_tensor_dict(root / n / "adapter_model.bin")["suffix_tokens.default"].double()
            for n in ("vision", "video", "point")]
    assert torch.equal(weights["suffix_tokens.default"], (sum(held) / 3).to(torch.bfloat16).to(torch.float16))
    audio = load_tensor_dict(root / "audio" / "adapter_model.bin")
    qkey = "model.modal_projectors.audio.audio_Qformer.bert.encoder.layer.1.crossattention.self.value.weight"
    assert torch.equal(load_tensor_dict(result.output / "adapter_model.bin")[qkey], audio[qkey])


def test_naivemc_modality_tokens_keep_their_own_lora_under_the_modality_name(mc: Path):
    result = run_merge(prepare(load_recipe(_recipe(mc))), show_progress=False)
    out = load_tensor_dict(result.output / "adapter_model.bin")
    video = load_tensor_dict(mc / "video" / "adapter_model.bin")
    stem = Q[: -len(".weight")]
    assert torch.equal(out[f"{stem}.lora_A.video.weight"][:R], video[f"{stem}.lora_A.default.weight"])


def test_a_peft_specialist_cannot_join_a_composed_model_and_nothing_is_written(mc: Path):
    make_lora_specialist(mc / "peft", seed=4)
    recipe = write_recipe(mc / "mixed.yaml", Path("base"), [("vision", Path("vision")), ("peft", Path("peft"))],
                          output={"path": "merged-multimodal", "format": "modelcompose"})
    with pytest.raises(UserError, match=r"output\.format: modelcompose: specialist 'peft'.*lora checkpoint"):
        prepare(load_recipe(recipe))
    assert not (mc / "merged-multimodal").exists()


def test_output_safetensors_is_no_longer_an_option(mc: Path):
    """ModelCompose's loader reads only adapter_model.bin: a safetensors variant would be a file it never reads."""
    with pytest.raises(RecipeError, match=r"output\.safetensors"):
        load_recipe(write_recipe(mc / "recipe.yaml", Path("base"), [(name, Path(name)) for name, *_ in SET],
                                 output={"path": "merged-multimodal", "format": "modelcompose", "safetensors": True}))


def test_a_folder_name_the_loader_would_misread_is_refused_before_any_work(mc: Path):
    with pytest.raises(UserError, match="'multimodal' in its folder name"):
        prepare(load_recipe(_recipe(mc, out="merged")))


def test_a_method_with_dense_output_is_refused_for_a_composed_model_unless_in_core_space(mc: Path):
    with pytest.raises(UserError, match="does not produce low-rank updates.*space: core"):
        prepare(load_recipe(_recipe(mc, method="ties")))
    result = run_merge(prepare(load_recipe(_recipe(mc, method="ties", space="core"))), show_progress=False)
    assert result.manifest.tensors[Q]["space"] == "core"


def test_full_output_merges_the_decoder_and_keeps_each_modality_in_its_own_file(mc: Path):
    result = run_merge(prepare(load_recipe(_recipe(mc, out="full-out", fmt="full"))), show_progress=False)
    vision = load_file(str(result.output / "modalities" / "vision.safetensors"))
    stored = load_tensor_dict(mc / "vision" / "adapter_model.bin")
    averaged = set(result.manifest.modalities["vision"]["averaged"])  # the shared tokens: their mean (test below)
    assert vision and all(torch.equal(v, stored[k]) for k, v in vision.items() if k not in averaged)
    assert result.manifest.modalities["video"]["file"] == "modalities/video.safetensors"


def test_validate_plans_the_default_tokens_as_averaged_and_the_merge_writes_their_mean(mc: Path):
    """The `default` tokens are language-side and shared: the plan averages them (over the specialists that hold
    them; NaiveMC video has none), ssam validate counts them, and the composed file holds their float32 mean."""
    from typer.testing import CliRunner

    from ssam_cli.cli import app
    from ssam_cli.plan import Role

    recipe = _recipe(mc, parameters={"rank": R})
    prepared = prepare(load_recipe(recipe))
    shared = {t.name: t for t in prepared.plan.tensors if not t.in_base}
    assert set(shared) == {"prefix_tokens.default", "suffix_tokens.default"}
    assert all(t.role is Role.AVERAGE for t in shared.values())
    names = [prepared.inputs.specialists[c.index].name for c in shared["prefix_tokens.default"].contributions]
    assert names == ["vision", "point"]
    shown = CliRunner().invoke(app, ["validate", str(recipe)], terminal_width=200)
    assert shown.exit_code == 0 and re.search(r"average\s*│\s*2\b", shown.output), shown.output

    result = run_merge(prepared, show_progress=False)
    out = load_tensor_dict(result.output / "adapter_model.bin")
    for key in shared:
        held = [load_tensor_dict(mc / n / "adapter_model.bin")[key].double() for n in ("vision", "point")]
        assert torch.allclose(out[key].double(), (held[0] + held[1]) / 2, rtol=0, atol=1e-7)


def test_default_tokens_of_different_counts_are_refused_naming_both_specialists(mc: Path):
    from tests.fixtures.modelcompose import make_modelcompose_specialist

    make_modelcompose_specialist(mc / "video", "video", "damc", seed=7, tokens=3)
    with pytest.raises(UserError, match=r"specialist 'video': shared tensor prefix_tokens.default is \(1, 3, 32\) "
                                        r"torch.bfloat16, specialist 'vision' has \(1, 5, 32\)"):
        prepare(load_recipe(_recipe(mc)))


def test_a_full_output_writes_each_holders_averaged_tokens_into_its_modality_file(mc: Path):
    result = run_merge(prepare(load_recipe(_recipe(mc, out="merged", fmt="full", parameters={"rank": R}))),
                       show_progress=False)
    vision = load_file(str(result.output / "modalities" / "vision.safetensors"))
    held = [load_tensor_dict(mc / n / "adapter_model.bin")["prefix_tokens.default"].double() for n in ("vision", "point")]
    assert torch.allclose(vision["prefix_tokens.default"].double(), (held[0] + held[1]) / 2, rtol=0, atol=1e-7)
    assert "prefix_tokens.default" not in load_file(str(result.output / "modalities" / "video.safetensors"))
    assert result.manifest.modalities["vision"]["averaged"] == ["prefix_tokens.default", "suffix_tokens.default"]
