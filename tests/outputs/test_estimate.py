"""The plan table's size estimate is what the weight files then hold (tensor bytes, headers aside)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from ssam_cli import api
from tests.fixtures.tiny import make_base, make_full_specialist, write_recipe


def test_full_estimate_equals_the_tensor_bytes_written(tmp_path):
    base = make_base(tmp_path / "base")
    make_full_specialist(tmp_path / "a", base, seed=1, extra={"model.mm_projector.weight": torch.ones(8, 4)})
    recipe = write_recipe(tmp_path / "r.yaml", base, [("a", tmp_path / "a")], parameters={"rank": 2},
                          modules={"keep": ["*mm_projector*"]}, output={"path": "out", "dtype": "bfloat16"})
    estimate = api.validate(recipe).output.estimated_bytes()
    out = api.merge(recipe).output
    files = sorted(out.glob("model*.safetensors")) + sorted((out / "modalities").glob("*.safetensors"))
    written = sum(t.numel() * t.element_size() for f in files for t in load_file(str(f)).values())
    assert estimate == written
