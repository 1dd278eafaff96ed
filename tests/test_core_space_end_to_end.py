"""`space: core` end to end when the stacked factors are rank-deficient (two adapters sharing lora_B): the Core
Space basis must be the numerically non-zero singular directions, or the merge loses part of the updates.

Expected values in float64 from the adapters' files (tests.fixtures.tiny.known_factors / known_update, s = alpha/r);
the output adapter is read the same way. Tolerance: 1e-5 relative Frobenius error (float32 compute and output).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from ssam_cli.cli import app
from tests.fixtures.tiny import known_factors, known_update, linear_shapes, make_base, make_lora_specialist, write_recipe
from tests.reference import core_space_reference, rel_err, ties_reference

LINEAR = sorted(linear_shapes(2))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A base, adapter `la`, and `shared`: la's lora_B with lora_A of its own (the stacked B has rank r, not 2r)."""
    root = tmp_path_factory.mktemp("core")
    make_base(root / "base")
    make_lora_specialist(root / "la", seed=1)
    make_lora_specialist(root / "shared", seed=5)
    theirs = load_file(str(root / "la" / "adapter_model.safetensors"))
    mine = load_file(str(root / "shared" / "adapter_model.safetensors"))
    save_file({k: theirs[k] if "lora_B" in k else v for k, v in mine.items()},
              str(root / "shared" / "adapter_model.safetensors"))
    return root


def merge(root: Path, out: str, method: str, parameters: dict) -> Path:
    recipe = write_recipe(root / f"{out}.yaml", Path("base"), [("la", Path("la")), ("shared", Path("shared"))],
                          method=method, space="core", parameters=parameters,
                          output={"path": out, "format": "lora", "dtype": "float32"})
    result = CliRunner().invoke(app, ["merge", str(recipe), "-q", "--overwrite"])
    assert result.exit_code == 0, result.output
    return root / out


def test_a_linear_merge_in_core_space_is_lossless(root):
    """dare_linear at p = 0 is the plain sum, computed on the cores: the core basis must span every update."""
    out = merge(root, "core-sum", "dare_linear", {"p": 0.0})
    for t in LINEAR:
        want = known_update(root / "la", t, root / "base") + known_update(root / "shared", t, root / "base")
        assert rel_err(known_update(out, t, root / "base"), want) < 1e-5, t


def test_ties_in_core_space_matches_the_definition(root):
    out = merge(root, "core-ties", "ties", {"density": 0.3})
    for t in LINEAR:
        want = core_space_reference([known_factors(root / n, t) for n in ("la", "shared")],
                                    lambda cores: ties_reference(cores, 0.3))
        assert rel_err(known_update(out, t, root / "base"), want) < 1e-5, t
        assert torch.linalg.matrix_rank(want).item() <= 4  # the shared B: rank ≤ r, not 2r
