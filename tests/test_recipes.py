"""Every example recipe in recipes/examples validates against the checkpoints its generator writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ssam_cli.engine import prepare
from ssam_cli.recipe import load_recipe

EXAMPLES = Path(__file__).resolve().parents[1] / "recipes" / "examples"


@pytest.fixture(scope="module")
def generated():
    subprocess.run([sys.executable, str(EXAMPLES / "generate.py")], check=True, capture_output=True)


@pytest.mark.parametrize("recipe", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_recipe_validates(generated, recipe):
    prepared = prepare(load_recipe(recipe))
    assert prepared.plan.tensors


def test_the_modelcompose_recipe_validates_and_merges_against_released_style_specialists(tmp_path):
    """recipes/modelcompose-ssam.yaml as shipped, beside tiny DAMC specialists at its placeholder paths."""
    import json

    from ssam_cli.engine import run_merge
    from tests.fixtures.modelcompose import make_modelcompose_specialist
    from tests.fixtures.tiny import make_base

    recipe = tmp_path / "modelcompose-ssam.yaml"
    recipe.write_text((EXAMPLES.parent / "modelcompose-ssam.yaml").read_text())
    make_base(tmp_path / "checkpoints" / "vicuna-7b-v1.5")
    for seed, modality in enumerate(("vision", "audio", "video", "point")):
        make_modelcompose_specialist(tmp_path / "checkpoints" / f"multimodal-vicuna-7b-v1.5-{modality}-damc",
                                     modality, "damc", seed)
    out = subprocess.run([sys.executable, "-m", "ssam_cli", "validate", str(recipe)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result = run_merge(prepare(load_recipe(recipe)), show_progress=False)
    config = json.loads((result.output / "config.json").read_text())
    assert config["mm_vision_tower"] == "openai/clip-vit-large-patch14-336"  # the recipe's remapped encoder path
    assert config["mm_point_encoder"] == "/models/PointLLM/point_bert_v1.2.pt"
    assert sorted(result.manifest.modalities) == ["audio", "point", "video", "vision"]
