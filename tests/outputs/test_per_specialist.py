"""LLaVA-HF (both layouts) and Qwen2-Audio specialists of one Llama decoder, merged against the text-only base into
`format: per_specialist`, and each folder loaded back by its own transformers class.

Truth is independent of ssam_cli: the tuned decoders come from the fixture's own tensors (under the base's names),
the merge from tests/reference.py in float64; logits are compared with a model assembled by hand from that
reference, within rtol 1e-4 / atol 1e-5 (the merge runs in float32).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from tests.fixtures.multimodal import (AUDIO_TOKEN, IMAGE_TOKEN, make_audio_specialist,  # noqa: E402
                                       make_llava_specialist, make_text_base, to_llava_452)
from tests.fixtures.tiny import write_recipe  # noqa: E402
from tests.reference import ssam_reference  # noqa: E402

RANK = 4
SPECIALISTS = ("vision", "vision452", "audio")  # llava-hf < 4.52 layout, llava-hf ≥ 4.52 layout, Qwen2-Audio


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("multimodal")
    base = make_text_base(root / "base")
    tuned = {"vision": make_llava_specialist(root / "vision", base, seed=1),
             "vision452": make_llava_specialist(root / "vision452", base, seed=2),
             "audio": make_audio_specialist(root / "audio", base, seed=3)}
    to_llava_452(root / "vision452")
    recipe = write_recipe(root / "recipe.yaml", Path("base"), [(n, Path(n)) for n in SPECIALISTS],
                          parameters={"rank": RANK}, output={"path": "out", "format": "per_specialist",
                                                             "dtype": "float32"})
    return {"root": root, "base": base, "tuned": tuned, "recipe": recipe}


def reference_decoder(world: dict) -> dict[str, torch.Tensor]:
    """Algorithm 1 in float64 for every matrix, the specialists' mean for every vector (λ = 1/n, the default)."""
    base, n = world["base"], len(SPECIALISTS)
    out = {}
    for name, w0 in base.items():
        deltas = [world["tuned"][s][name] - w0 for s in SPECIALISTS]
        merged = ssam_reference(deltas, RANK, 1 / n) if w0.ndim == 2 else sum(d.double() for d in deltas) / n
        out[name] = (w0.double() + merged).float()
    return out


def test_validate_finds_each_layout_and_keeps_every_tower_tensor(world: dict):
    from safetensors import safe_open

    from ssam_cli import api
    from ssam_cli.commands.render import decoder_lines

    p = api.validate(world["recipe"])
    said = {n: m.describe() for n, m in p.plan.decoders.items()}
    assert said == {"vision": "* → language_model.*", "audio": "* → language_model.*",
                    "vision452": "model.* → model.language_model.* (other names as in the base)"}
    assert decoder_lines(p)[1] == ("vision452: decoder at model.* → model.language_model.* (other names as in the "
                                   "base); 43 other tensor(s) kept as its own")
    for index, name in enumerate(SPECIALISTS):
        with safe_open(str(world["root"] / name / "model.safetensors"), "pt") as f:
            keys = set(f.keys())
        paired = {c.key for t in p.plan.tensors for c in t.contributions if c.index == index}
        kept = {k.key for k in p.plan.kept if k.specialist == name}
        assert paired | kept == keys and not paired & kept
        assert paired == {p.plan.decoders[name](b) for b in world["base"]}
        assert all("tower" in k or "projector" in k for k in kept), sorted(kept)
    assert "vision_tower.encoder.layers.0.self_attn.q_proj.weight" in {k.key for k in p.plan.kept}


def test_ssam_validate_says_each_mapping(world: dict):
    from tests.test_cli import ssam

    done = ssam("validate", str(world["recipe"]))
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # rich wraps the caption
    for line in ("vision: decoder at * → language_model.*; 43 other tensor(s) kept as its own",
                 "vision452: decoder at model.* → model.language_model.* (other names as in the base); 43 other",
                 "audio: decoder at * → language_model.*; 24 other tensor(s) kept as its own"):
        assert line in text, line


def test_each_folder_loads_with_its_class_and_gives_the_reference_logits(world: dict):
    from safetensors.torch import load_file
    from transformers import LlavaForConditionalGeneration, Qwen2AudioForConditionalGeneration

    from ssam_cli import api

    result = api.merge(world["recipe"])
    out, ref = result.output, reference_decoder(world)
    classes = {"vision": LlavaForConditionalGeneration, "vision452": LlavaForConditionalGeneration,
               "audio": Qwen2AudioForConditionalGeneration}
    records = json.loads((out / "manifest.json").read_text())["modalities"]
    assert {n: r["folder"] for n, r in records.items()} == {n: n for n in SPECIALISTS}
    for name, cls in classes.items():
        src = world["root"] / name
        for side in ("config.json", "preprocessor_config.json", "generation_config.json"):
            assert (out / name / side).read_bytes() == (src / side).read_bytes(), (name, side)
        original, written = load_file(str(src / "model.safetensors")), load_file(str(out / name / "model.safetensors"))
        assert set(written) == set(original)
        for key in records[name]["tensors"]:  # towers and projectors, byte for byte
            assert written[key].dtype == original[key].dtype and torch.equal(written[key], original[key]), key

        merged = cls.from_pretrained(out / name).eval()
        by_hand = cls.from_pretrained(src).eval()  # the specialist itself, its decoder replaced by the reference
        by_hand.get_decoder().load_state_dict({k[len("model."):]: v for k, v in ref.items() if k.startswith("model.")})
        by_hand.get_output_embeddings().weight.data.copy_(ref["lm_head.weight"])
        inputs = model_inputs(name)
        with torch.no_grad():
            got, want = merged(**inputs).logits, by_hand(**inputs).logits
            untouched = cls.from_pretrained(src).eval()(**inputs).logits
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert (untouched - want).abs().max() > 1e-3  # the merge changed what the model says


def model_inputs(name: str) -> dict[str, torch.Tensor]:
    """Tokens around the modality's placeholders, and the modality itself, so towers and decoder both count."""
    g = torch.Generator().manual_seed(7)
    if name.startswith("vision"):  # 8×8 image, 4×4 patches: 4 image features (the CLS feature is dropped)
        ids = torch.tensor([[1, 5] + [IMAGE_TOKEN] * 4 + [7, 9, 11]])
        return {"input_ids": ids, "pixel_values": torch.randn(1, 3, 8, 8, generator=g)}
    frames = 32  # two stride-2 stages → 8 audio features
    ids = torch.tensor([[1, 5] + [AUDIO_TOKEN] * 8 + [7, 9]])
    return {"input_ids": ids, "input_features": torch.randn(1, 8, frames, generator=g),
            "feature_attention_mask": torch.ones(1, frames, dtype=torch.long)}


def test_a_specialist_without_an_architecture_of_its_own_or_a_taken_name_is_refused(tiny: Path):
    from ssam_cli import api
    from ssam_cli.errors import UserError

    recipe = write_recipe(tiny / "lora.yaml", Path("base"), [("a", Path("a")), ("c", Path("c"))],
                          output={"format": "per_specialist"})
    with pytest.raises(UserError, match=r"output.format: per_specialist: specialist 'a' is a lora source, which has "
                                        r"no architecture of its own to write a folder for; use format: full$"):
        api.validate(recipe)
    recipe = write_recipe(tiny / "taken.yaml", Path("base"), [("config.json", Path("c"))],
                          output={"format": "per_specialist"})
    with pytest.raises(UserError, match=r"specialist name 'config.json' is also a file or folder of the merged "
                                        r"checkpoint; rename the specialist$"):
        api.validate(recipe)
