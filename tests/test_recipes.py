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
