"""The model card: Hub metadata the Hub understands, and a body that says how the merge was made."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from ssam_cli.hub.card import front_matter, hub_id, metadata, model_card, read_license, write_model_card

BASE_COMMIT = "a" * 40
VISION_COMMIT = "b" * 40
RECIPE_TEXT = "method: ssam\nbase: lmsys/vicuna-7b-v1.5\n# a comment the card keeps\n"


def sample_manifest(fmt: str = "full") -> dict:
    """The manifest schema the engine writes: a Hub base, a Hub specialist and a local-only one."""
    merged = {
        f"model.layers.{i}.self_attn.q_proj.weight": {
            "role": "merge", "shape": [32, 32], "lambda": 0.5, "rank_requested": 8, "rank_used": r,
            "rank_capped": r < 8, "energy_left": e, "energy_right": e2, "norm_sum": 2.0, "norm_merged": nm}
        for i, (r, e, e2, nm) in enumerate([(8, 0.90, 0.80, 1.0), (8, 0.95, 0.85, 1.5), (6, 0.99, 0.97, 0.5)])}
    return {
        "tool": "ssam", "version": "0.1.0", "created": "2026-01-01T00:00:00+00:00",
        "recipe": {"method": "ssam", "base": {"path": "lmsys/vicuna-7b-v1.5", "revision": None},
                   "specialists": [{"name": "vision", "path": "org/vision-lora", "modality": "image"},
                                   {"name": "audio", "path": "/data/audio-lora", "modality": "audio"}],
                   "parameters": {"rank": 8}},
        "method": "ssam", "paper": {"title": "SSAM", "url": "https://arxiv.org/abs/2603.21584"},
        "parameters": {"rank": 8, "lambda": None}, "device": "cpu", "seed": 0,
        "output": {"format": fmt, "dtype": "bfloat16"},
        "inputs": [
            {"role": "base", "name": "base", "path": "/cache/snapshots/" + BASE_COMMIT, "kind": "full",
             "revision": None, "commit": BASE_COMMIT, "license": "llama2", "files": []},
            {"role": "specialist", "name": "vision", "path": "/cache/v", "kind": "lora", "revision": "main",
             "commit": VISION_COMMIT, "modality": "image", "weight": 1.0, "files": []},
            {"role": "specialist", "name": "audio", "path": "/data/audio-lora", "kind": "lora", "revision": None,
             "commit": None, "modality": "audio", "weight": 1.0, "files": []},
        ],
        "tensors": {**merged, "model.norm.weight": {"role": "average", "shape": [32]}},
        "modalities": {"vision": {"file": "modalities/vision.safetensors", "modality": "image",
                                  "tensors": ["model.mm_projector.weight", "model.mm_projector.bias"]},
                       "audio": {"file": "modalities/audio.safetensors", "modality": "audio",
                                 "tensors": ["model.audio_qformer.weight"]}},
        "files": [{"path": "model.safetensors", "size": 1, "sha256": "0" * 64}],
        "summary": {"tensors": {"merge": 3, "average": 1, "keep": 3, "copy": 0}},
    }


def test_front_matter_names_hub_inputs_as_merge_parents_and_carries_tags_library_and_license():
    card = model_card(sample_manifest(), "me/merged")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["base_model"] == ["lmsys/vicuna-7b-v1.5", "org/vision-lora"]  # base first; the local one is not
    assert meta["base_model_relation"] == "merge"
    assert meta["library_name"] == "transformers"
    assert meta["license"] == "llama2"
    assert meta["tags"] == ["merge", "ssam", "model-merging", "image", "audio"]  # method ssam: not repeated


def test_the_method_and_its_paper_follow_the_manifest():
    m = sample_manifest()
    m["method"] = "task_arithmetic"
    m["paper"] = {"title": "Editing Models with Task Arithmetic", "url": "https://arxiv.org/abs/2212.04089"}
    assert metadata(m)["tags"][3] == "task-arithmetic"
    assert "[Editing Models with Task Arithmetic](https://arxiv.org/abs/2212.04089)" in model_card(m, None)
    del m["paper"]
    assert "arxiv.org" not in model_card(m, None)  # the card cites only what the manifest recorded


def test_a_lora_output_is_a_peft_card_loaded_on_top_of_the_base():
    card = model_card(sample_manifest("lora"), "me/merged")
    assert metadata(sample_manifest("lora"))["library_name"] == "peft"
    assert 'AutoModelForCausalLM.from_pretrained("lmsys/vicuna-7b-v1.5")' in card
    assert 'PeftModel.from_pretrained(base, "me/merged")' in card


def test_local_only_inputs_are_named_in_the_body_not_dropped():
    card = model_card(sample_manifest(), "me/merged")
    assert "Not on the Hub, so not listed in `base_model`: audio" in card
    assert "`/data/audio-lora` (local)" in card
    assert "[org/vision-lora](https://huggingface.co/org/vision-lora) @ `bbbbbbbbbbbb`" in card


def test_the_body_gives_method_paper_k_lambda_modalities_and_the_recipe_verbatim():
    m = sample_manifest()
    m["recipe_text"] = RECIPE_TEXT
    card = model_card(m, "me/merged")
    assert "https://arxiv.org/abs/2603.21584" in card
    assert "| k (consensus rank) | 8 |" in card
    assert "| λ (scale) | 0.5 (default: 1/n) |" in card  # the λ each tensor actually used
    assert "| vision | image | `modalities/vision.safetensors` | 2 |" in card
    assert 'load_file("modalities/audio.safetensors")' in card  # sorted: audio first
    assert "```yaml\n" + RECIPE_TEXT.rstrip("\n") + "\n```" in card


def test_without_recipe_text_the_card_shows_the_recipe_as_run():
    card = model_card(sample_manifest(), None)
    body = card.split("The recipe as run (paths resolved):\n\n```yaml\n")[1].split("\n```")[0]
    assert yaml.safe_load(body) == sample_manifest()["recipe"]


def test_spectrum_summary_is_min_median_max_over_merged_weights():
    card = model_card(sample_manifest(), None)
    assert "| rank used (k) | 6 | 8 | 8 |" in card
    assert "| energy captured, left | 0.9 | 0.95 | 0.99 |" in card
    assert "| ‖merged Δ‖ / ‖Σ Δ_i‖ | 0.25 | 0.5 | 0.75 |" in card
    assert "k was capped at the numerical rank for 1 weight(s)" in card
    assert "Tensors by role: merge 3, average 1, keep 3, copy 0." in card


def test_the_suggested_k_of_the_merge_spectrum_is_in_the_card_when_computed():
    m = sample_manifest()
    assert "Suggested k" not in model_card(m, None)
    m["spectrum"] = {"suggested_k": {"model": 96, "by_module": {"q": 64, "down": 128}, "rule": "smallest k keeping 95 %"}}
    assert ("Suggested k for these specialists: **96** (per module: q 64, down 128). Rule: smallest k keeping 95 %"
            in model_card(m, None))


def test_an_explicit_lambda_is_shown_as_given():
    m = sample_manifest()
    m["parameters"]["lambda"] = 0.7
    assert "| λ (scale) | 0.7 |" in model_card(m, None)


def test_no_hub_input_means_no_base_model_key():
    m = sample_manifest()
    for row in m["inputs"]:
        row["commit"] = None
    meta = metadata(m)
    assert "base_model" not in meta and "base_model_relation" not in meta


def test_the_card_is_deterministic_and_written_as_readme(tmp_path: Path):
    m = sample_manifest()
    assert model_card(copy.deepcopy(m), "me/x") == model_card(m, "me/x")
    path = write_model_card(tmp_path, m, "me/x")
    assert path == tmp_path / "README.md" and path.read_text(encoding="utf-8") == model_card(m, "me/x")


def test_license_is_read_from_the_base_folder_card_when_the_manifest_has_none(tmp_path: Path):
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\ntags: [x]\n---\n# base\n")
    m = sample_manifest()
    m["inputs"][0].pop("license")
    m["inputs"][0]["path"] = str(tmp_path)
    assert metadata(m)["license"] == "apache-2.0"
    assert read_license(tmp_path / "nowhere") is None


@pytest.mark.parametrize("text, expected", [
    ("---\nlicense: mit\n---\nbody", {"license": "mit"}),
    ("no front matter", {}),
    ("---\n: [unclosed\n---\n", {}),
    ("---\n- a list\n---\n", {}),
])
def test_front_matter(text, expected):
    assert front_matter(text) == expected


@pytest.mark.parametrize("row, path, expected", [
    ({"repo_id": "x/y"}, None, "x/y"),
    ({"commit": "c" * 40}, "org/name", "org/name"),
    ({"commit": "c" * 40}, "hf://org/name", "org/name"),
    ({"commit": None}, "org/name", None),          # no commit recorded: it was a local folder
    ({"commit": "c" * 40}, "/abs/org/name", None),
])
def test_hub_id(row, path, expected):
    assert hub_id(row, path) == expected
