"""A real (tiny) ssam output folder to push: built once per test session, copied per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.fixtures.tiny import make_base, make_full_specialist, make_lora_specialist, write_recipe


def build_output(root: Path) -> Path:
    """base + a LoRA specialist + a full one with a kept projector → root/out, through the real engine."""
    from ssam_cli.engine import prepare, run_merge
    from ssam_cli.recipe import load_recipe

    base = make_base(root / "base")
    make_lora_specialist(root / "a", seed=1)
    proj = torch.randn(32, 16, generator=torch.Generator().manual_seed(5))
    make_full_specialist(root / "v", base, seed=3, extra={"model.mm_projector.weight": proj})
    recipe = write_recipe(root / "recipe.yaml", base, [("a", root / "a"), ("v", root / "v")],
                          modules={"keep": ["*mm_projector*"]}, parameters={"rank": 4})
    return run_merge(prepare(load_recipe(recipe)), show_progress=False).output


@pytest.fixture(scope="session")
def _built_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_output(tmp_path_factory.mktemp("merge"))


@pytest.fixture
def output(_built_output: Path, tmp_path: Path) -> Path:
    """A fresh copy of a finished merge output (tests may edit it)."""
    return Path(shutil.copytree(_built_output, tmp_path / "merged"))
