"""Which base weight an adapter's key names, end to end: PEFT wraps module names in prefixes that depend on the
model class, so a key may be a suffix of the base name; a suffix that fits two base weights names neither (pairing
it with the first would silently merge an update into the wrong layer)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from ssam_cli.cli import app
from tests.fixtures.tiny import make_base, make_lora_specialist, write_recipe
from tests.reference import rel_err

REPO = Path(__file__).resolve().parents[1]


def adapter_with_module(tmp_path: Path, module: str) -> Path:
    """An adapter holding one LoRA pair, on `module` as written in its keys."""
    folder = make_lora_specialist(tmp_path / "one", seed=1)
    g = torch.Generator().manual_seed(7)
    save_file({f"base_model.model.{module}.lora_A.weight": torch.randn(4, 32, generator=g),
               f"base_model.model.{module}.lora_B.weight": torch.randn(32, 4, generator=g)},
              str(folder / "adapter_model.safetensors"))
    return folder


def test_a_key_that_is_a_unique_suffix_pairs_with_that_weight(tmp_path):
    make_base(tmp_path / "base")
    adapter_with_module(tmp_path, "layers.1.self_attn.q_proj")
    recipe = write_recipe(tmp_path / "r.yaml", Path("base"), [("one", Path("one"))], method="task_arithmetic",
                          output={"path": "out", "dtype": "float32"})
    result = CliRunner().invoke(app, ["merge", str(recipe), "-q"])
    assert result.exit_code == 0, result.output
    merged = load_file(str(tmp_path / "out" / "model.safetensors"))
    base = load_file(str(tmp_path / "base" / "model.safetensors"))
    factors = load_file(str(tmp_path / "one" / "adapter_model.safetensors"))
    key = "base_model.model.layers.1.self_attn.q_proj.lora_"
    want = 8 / 4 * factors[key + "B.weight"].double() @ factors[key + "A.weight"].double()  # alpha / r = 8 / 4
    q1, q0 = "model.layers.1.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight"
    assert rel_err(merged[q1].double() - base[q1].double(), want) < 1e-5
    assert torch.equal(merged[q0], base[q0])


def test_a_key_that_fits_two_weights_is_a_one_line_error(tmp_path):
    make_base(tmp_path / "base")
    adapter_with_module(tmp_path, "self_attn.q_proj")  # the suffix of layer 0's and layer 1's q_proj
    recipe = write_recipe(tmp_path / "r.yaml", Path("base"), [("one", Path("one"))])
    out = subprocess.run([sys.executable, "-m", "ssam_cli", "validate", str(recipe)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"})
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.count("\n") == 1 and "self_attn.q_proj.weight" in out.stderr and "specialist 'one'" in out.stderr
    assert "fits 2 weights of the base (model.layers.0.self_attn.q_proj.weight, model.layers.1.self_attn" in out.stderr
