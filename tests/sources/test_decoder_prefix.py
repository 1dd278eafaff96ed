"""Wrapped decoders found by one name rewrite per specialist, never tensor by tensor; one-line errors otherwise.

The checkpoints here are plain safetensors files with hand-written names (the layouts transformers writes are
covered by tests/outputs/test_per_specialist.py with the real classes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssam_cli.errors import InputError
from ssam_cli.plan import NamedSource, build_plan
from ssam_cli.sources import open_source
from ssam_cli.sources.decoder_prefix import DecoderMap, candidates, find_decoder
from tests.fixtures.tiny import HIDDEN, base_tensors, make_base, write_checkpoint

LAYERS = 2
# a tower whose layer names end like the decoder's, with the decoder's shapes
TOWER = {f"vision_tower.encoder.layers.{i}.self_attn.{m}.weight": torch.randn(HIDDEN, HIDDEN)
         for i in range(LAYERS) for m in ("q_proj", "k_proj", "v_proj", "o_proj")}


def wrapped(folder: Path, rename, extra=None, drop=(), seed: int = 5) -> Path:
    tensors = {rename(k): v + 0.01 for k, v in base_tensors(LAYERS, seed=0).items() if k not in drop}
    return write_checkpoint(folder, {**tensors, **TOWER, **(extra or {})}, LAYERS)


def old_llava(name: str) -> str:
    return "language_model." + name


def new_llava(name: str) -> str:
    return "model.language_model." + name[len("model."):] if name.startswith("model.") else name


def plan_of(tmp_path: Path, *folders: Path, decoder=None):
    base = open_source(make_base(tmp_path / "base", LAYERS))
    return build_plan(base, [NamedSource(f.name, open_source(f), decoder) for f in folders])


@pytest.mark.parametrize("rename, said", [(old_llava, "* → language_model.*"),
                                          (new_llava, "model.* → model.language_model.* (other names as in the base)"),
                                          (lambda n: n, "the base's own names")])
def test_the_one_complete_rewrite_is_found(rename, said):
    base = list(base_tensors(LAYERS))
    names = {rename(b) for b in base} | set(TOWER)
    found = find_decoder(base, base, names, "specialist 'v'")
    assert found.describe() == said and {found(b) for b in base} <= names


def test_a_tower_ending_like_decoder_layers_is_a_candidate_never_chosen():
    base = list(base_tensors(LAYERS))
    names = {old_llava(b) for b in base} | set(TOWER)
    tower = DecoderMap("vision_tower.encoder.", "model.")
    assert tower in candidates(base, names)  # its q_proj names end like the base's
    assert find_decoder(base, base, names, "v") == DecoderMap("language_model.")


def test_wrapped_specialist_pairs_its_decoder_and_keeps_every_other_tensor(tmp_path: Path):
    plan = plan_of(tmp_path, wrapped(tmp_path / "v", old_llava, extra={"multi_modal_projector.weight":
                                                                        torch.randn(HIDDEN, HIDDEN)}))
    paired = {c.key for t in plan.tensors for c in t.contributions}
    assert paired == {old_llava(b) for b in base_tensors(LAYERS)}
    assert {k.key for k in plan.kept} == set(TOWER) | {"multi_modal_projector.weight"}


def test_a_missing_decoder_tensor_names_specialist_tensor_and_candidates(tmp_path: Path):
    v = wrapped(tmp_path / "v", new_llava, drop=("model.norm.weight",))
    with pytest.raises(InputError) as e:
        plan_of(tmp_path, v)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"specialist 'v' ({v}): tensor model.language_model.norm.weight of "
                                              "the base is missing")
    assert "model.* → model.language_model.*" in msg and "decoder: {prefix:" in msg


def test_a_misshaped_decoder_tensor_names_both_names(tmp_path: Path):
    v = wrapped(tmp_path / "v", old_llava, drop=("model.norm.weight",),
                extra={"language_model.model.norm.weight": torch.ones(HIDDEN + 1)})
    with pytest.raises(InputError, match=r"^specialist 'v' \(.*\): tensor language_model.model.norm.weight \(the "
                                         r"base's model.norm.weight\) has shape \(33,\), the base .* \(32,\)$"):
        plan_of(tmp_path, v)


def test_two_complete_rewrites_are_ambiguous_until_the_recipe_says(tmp_path: Path):
    twice = {new_llava(k): v for k, v in base_tensors(LAYERS).items()}
    v = wrapped(tmp_path / "v", old_llava, extra=twice)  # the decoder under both layouts
    with pytest.raises(InputError) as e:
        plan_of(tmp_path, v)
    msg = str(e.value)  # the root lm_head.weight also completes `model.` → `language_model.model.`
    assert msg.startswith("specialist 'v' (") and "\n" not in msg
    assert "the base's decoder fits under 3 name rewrites (* → language_model.*; model.* → language_model.model.* " \
        "(other names as in the base); model.* → model.language_model.* (other names as in the base)); state it " \
        "in the recipe with decoder: {prefix: ..., replaces: ...}" in msg
    plan = plan_of(tmp_path, v, decoder=DecoderMap("language_model."))
    assert {c.key for t in plan.tensors for c in t.contributions} == {old_llava(b) for b in base_tensors(LAYERS)}
    assert set(twice) <= {k.key for k in plan.kept}


def test_a_stated_rewrite_that_misses_a_tensor_is_refused(tmp_path: Path):
    v = wrapped(tmp_path / "v", old_llava)
    with pytest.raises(InputError, match=r"^specialist 'v' .*: decoder: model\.\* → model\.language_model\.\* "
                                         r".*: tensor lm_head.weight is not in the "
                                         r"checkpoint \(and \d+ more\)$"):
        plan_of(tmp_path, v, decoder=DecoderMap("model.language_model.", "model."))


def test_decoder_on_a_lora_specialist_is_refused(tiny: Path):
    base = open_source(tiny / "base")
    with pytest.raises(InputError, match="decoder: applies to full checkpoints; this specialist is a lora source"):
        build_plan(base, [NamedSource("a", open_source(tiny / "a"), DecoderMap("language_model."))])
