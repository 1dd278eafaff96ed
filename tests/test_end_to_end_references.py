"""`ssam merge` of full fine-tunes through SSAM's exact dense path, against the float64 Algorithm 1 on the updates
read from the fixture's files (tests.fixtures.tiny.known_update), at n = 1, 2, 3.

The tiny model's weights are 32 × 32 (attention), 48 × 32 (gate, up) and 32 × 48 (down): at n = 1 the left side
of gate/up and the right side of down are tall (the thin-QR branch), at n ≥ 2 every side is wide (the Gram branch).
Tolerance: 1e-5 relative Frobenius error per weight (float32 compute and output).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ssam_cli.cli import app
from tests.fixtures.tiny import known_update, linear_shapes, make_base, make_full_specialist, write_recipe
from tests.reference import rel_err, ssam_reference

LINEAR = sorted(linear_shapes(2))
NAMES = ["fa", "fb", "fc"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("exact")
    base = make_base(root / "base")
    for i, name in enumerate(NAMES):
        make_full_specialist(root / name, base, seed=20 + i, rank=None)
    return root


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_full_finetunes_merge_to_algorithm_1(root, n, exact):
    out = f"out-{n}-{exact}"
    names = NAMES[:n]
    recipe = write_recipe(root / f"{out}.yaml", Path("base"), [(x, Path(x)) for x in names],
                          parameters={"rank": 7, "exact": exact}, output={"path": out, "dtype": "float32"})
    result = CliRunner().invoke(app, ["merge", str(recipe), "-q", "--overwrite"])
    assert result.exit_code == 0, result.output
    merged = load_file(str(root / out / "model.safetensors"))
    base = load_file(str(root / "base" / "model.safetensors"))
    manifest = json.loads((root / out / "manifest.json").read_text())
    for t in LINEAR:
        want = ssam_reference([known_update(root / x, t, root / "base") for x in names], 7, 1 / n)
        assert rel_err(merged[t].double() - base[t].double(), want) < 1e-5, t
        entry = manifest["tensors"][t]
        assert entry["bases"] == "exact" and entry["rank_used"] == 7 and entry["lambda"] == pytest.approx(1 / n)
