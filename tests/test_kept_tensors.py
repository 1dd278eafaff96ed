"""modules.keep end to end for every kind of specialist: a modality-specific tensor (a projector) is written per
specialist to modalities/<name>.safetensors byte for byte, never merged, never in the merged weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ssam_cli.cli import app
from tests.fixtures.tiny import make_base, make_full_specialist, make_lora_specialist, write_recipe

PROJ = "model.mm_projector.weight"


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_a_kept_tensor_is_written_per_specialist_byte_identical(tmp_path, kind):
    base = make_base(tmp_path / "base")
    proj = torch.randn(32, 16, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    if kind == "lora":  # saved whole beside the LoRA factors, as PEFT's modules_to_save writes it
        make_lora_specialist(tmp_path / "v", seed=1, extra={f"base_model.model.{PROJ}": proj})
    else:
        make_full_specialist(tmp_path / "v", base, seed=9, extra={PROJ: proj})
    make_lora_specialist(tmp_path / "a", seed=2)
    recipe = write_recipe(tmp_path / "r.yaml", Path("base"), [("a", Path("a")), ("v", Path("v"))],
                          modules={"keep": ["*mm_projector*"]})
    result = CliRunner().invoke(app, ["merge", str(recipe), "-q"])
    assert result.exit_code == 0, result.output
    kept = load_file(str(tmp_path / "out" / "modalities" / "v.safetensors"))
    assert list(kept) == [PROJ] and torch.equal(kept[PROJ], proj)
    assert PROJ not in load_file(str(tmp_path / "out" / "model.safetensors"))
    assert not (tmp_path / "out" / "modalities" / "a.safetensors").exists()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["modalities"]["v"]["tensors"] == [PROJ]
