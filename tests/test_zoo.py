"""Every method end to end through the CLI on tiny checkpoints, LoRA and full specialists: the written
checkpoint loads in transformers, and each merged weight is base + the method applied to the true updates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ssam_cli import engine
from ssam_cli.cli import app
from ssam_cli.deltas import Delta, DenseDelta
from ssam_cli.engine import tensor_seed
from ssam_cli.methods import REGISTRY
from ssam_cli.methods.base import MergeContext
from ssam_cli.sources import open_source
from tests.fixtures.tiny import make_base, make_full_specialist, make_lora_specialist, write_recipe
from tests.reference import rel_err

Q = "model.layers.1.self_attn.q_proj.weight"
FAST = {"wudi": {"iterations": 40}, "optmerge": {"iterations": 40}}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    base = make_base(root / "base")
    make_lora_specialist(root / "la", seed=1)
    make_lora_specialist(root / "lb", seed=2)
    make_full_specialist(root / "fa", base, seed=3)
    make_full_specialist(root / "fb", base, seed=4, rank=None)
    return root


def cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


def true_deltas(root: Path, names: list[str], tensor: str) -> tuple[torch.Tensor, list[Delta]]:
    """The base value and each specialist's update as the engine hands it over (factored for LoRA)."""
    base = open_source(root / "base").read(tensor)
    out: list[Delta] = []
    for n in names:
        src = open_source(root / n)
        out.append(src.read_lowrank(tensor) if tensor in src.lowrank else DenseDelta(src.read(tensor) - base))
    return base, out


@pytest.mark.parametrize("kind", ["lora", "full"])
@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_method_merges_end_to_end(zoo, method, kind):
    names = ["la", "lb"] if kind == "lora" else ["fa", "fb"]
    out = f"out-{method}-{kind}"
    params = FAST.get(method, {})
    recipe = write_recipe(zoo / f"{out}.yaml", Path("base"), [(n, Path(n)) for n in names], method=method,
                          parameters=params, output={"path": out, "dtype": "float32"})
    result = cli("merge", str(recipe), "-q", "--overwrite")
    assert result.exit_code == 0, result.output
    folder = zoo / out
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["method"] == method
    merged = load_file(str(folder / "model.safetensors"))
    assert set(merged) == set(open_source(zoo / "base").tensors)
    assert all(torch.isfinite(t).all() for t in merged.values())

    base, deltas = true_deltas(zoo, names, Q)
    spec = REGISTRY[method]
    ctx = MergeContext(Q, len(names), torch.device("cpu"), torch.Generator().manual_seed(tensor_seed(0, Q)))
    expected = spec.merge(deltas, [1.0] * len(names), spec.params.model_validate(params), ctx)
    assert rel_err(merged[Q] - base, expected.delta.dense()) < 1e-5


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_a_baseline_output_loads_in_transformers(zoo, kind):
    """The writer is the same for every method (names, shapes and dtypes are checked above): load one."""
    from transformers import LlamaForCausalLM

    folder = zoo / f"out-ties-{kind}"
    if not folder.exists():
        test_method_merges_end_to_end(zoo, "ties", kind)

    model = LlamaForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.isfinite(logits).all()


def test_methods_command_lists_every_method_and_parameter():
    result = cli("methods")
    assert result.exit_code == 0
    for name, spec in REGISTRY.items():
        assert name in result.output
        for field_name, f in spec.params.model_fields.items():
            assert (f.alias or field_name) in result.output


@pytest.mark.parametrize("space", ["dense", "core"])
def test_space_is_recorded_and_core_space_writes_a_lora_adapter(zoo, space):
    out = f"out-ties-{space}"
    recipe = write_recipe(zoo / f"{out}.yaml", Path("base"), [("la", Path("la")), ("lb", Path("lb"))], method="ties",
                          space=space, output={"path": out, "format": "lora" if space == "core" else "full"})
    result = cli("merge", str(recipe), "-q", "--overwrite")
    assert result.exit_code == 0, result.output
    manifest = json.loads((zoo / out / "manifest.json").read_text())
    assert manifest["tensors"][Q]["space"] == space
