"""A specialist's `weight:` and the recipe's `seed:`, end to end through `ssam merge`.

Expected values are built in float64 from the fixture's own files (tests.fixtures.tiny.known_update: the LoRA
factors with s = alpha/r, or W_i − W_0), never from ssam_cli's readers or methods. Tolerance: 1e-5 relative
Frobenius error per weight (float32 compute and output).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from ssam_cli.cli import app
from tests.fixtures.tiny import (ATTN, MLP, known_update, linear_shapes, make_base, make_full_specialist,
                                 make_lora_specialist, write_recipe)
from tests.reference import rel_err, ssam_reference

TOL = 1e-5
LINEAR = sorted(linear_shapes(2))
Q0, K0 = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"
NORM = "model.layers.0.input_layernorm.weight"
PAIRS = {"lora": ("la", "lb"), "full": ("fa", "fb")}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    base = make_base(root / "base")
    make_lora_specialist(root / "la", seed=1)
    make_lora_specialist(root / "lb", seed=2, r=6, alpha=12)
    make_full_specialist(root / "fa", base, seed=3, rank=None)
    make_full_specialist(root / "fb", base, seed=4, rank=None)
    make_full_specialist(root / "fa2", base, seed=3, rank=None)  # the same fine-tune as fa, under another name
    return root


def merge(root: Path, out: str, specialists: list[tuple[str, float]], **fields) -> dict[str, torch.Tensor]:
    """Run `ssam merge` on a recipe naming `specialists` with their weights; the written tensors, in float64."""
    recipe = write_recipe(root / f"{out}.yaml", Path("base"), [(n, Path(n)) for n, _ in specialists],
                          output={"path": out, "dtype": "float32"}, **fields)
    data = yaml.safe_load(recipe.read_text())
    for entry, (_, w) in zip(data["specialists"], specialists):
        entry["weight"] = w
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    result = CliRunner().invoke(app, ["merge", str(recipe), "-q", "--overwrite"])
    assert result.exit_code == 0, result.output
    return {k: v.double() for k, v in load_file(str(root / out / "model.safetensors")).items()}


def base_value(root: Path, tensor: str) -> torch.Tensor:
    return load_file(str(root / "base" / "model.safetensors"))[tensor].double()


def update(root: Path, name: str, tensor: str) -> torch.Tensor:
    return known_update(root / name, tensor, root / "base")


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_task_arithmetic_scales_each_update_by_its_weight(root, kind):
    a, b = PAIRS[kind]
    got = merge(root, f"ta-{kind}", [(a, 1.0), (b, 0.5)], method="task_arithmetic", parameters={"lambda": 0.8})
    for t in LINEAR:
        want = 0.8 * (update(root, a, t) + 0.5 * update(root, b, t))
        assert rel_err(got[t] - base_value(root, t), want) < TOL, t


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_average_is_the_weighted_mean(root, kind):
    a, b = PAIRS[kind]
    got = merge(root, f"avg-{kind}", [(a, 1.0), (b, 0.5)], method="average")
    for t in LINEAR:
        want = (update(root, a, t) + 0.5 * update(root, b, t)) / 1.5
        assert rel_err(got[t] - base_value(root, t), want) < TOL, t


@pytest.mark.parametrize("method", ["ssam", "task_arithmetic"])
def test_norms_are_the_weighted_mean_of_the_specialists(root, method):
    got = merge(root, f"norm-{method}", [("fa", 1.0), ("fb", 0.5)], method=method)
    for t in (NORM, "model.norm.weight"):
        fa, fb = (load_file(str(root / n / "model.safetensors"))[t].double() for n in ("fa", "fb"))
        assert torch.allclose(got[t], (fa + 0.5 * fb) / 1.5, atol=1e-6), t


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_ssam_merges_the_weighted_updates(root, kind):
    a, b = PAIRS[kind]
    got = merge(root, f"ssam-{kind}", [(a, 1.0), (b, 0.5)], parameters={"rank": 5})
    for t in LINEAR:
        want = ssam_reference([update(root, a, t), 0.5 * update(root, b, t)], 5, 0.5)
        assert rel_err(got[t] - base_value(root, t), want) < TOL, t


def test_weights_change_the_merge(root):
    """The same specialists at weights 1 and 2 (not a common factor: λ is 1/n) merge to something else."""
    even = merge(root, "ssam-even", [("fa", 1.0), ("fb", 1.0)], parameters={"rank": 5})
    skew = merge(root, "ssam-skew", [("fa", 1.0), ("fb", 2.0)], parameters={"rank": 5})
    assert rel_err(skew[Q0] - base_value(root, Q0), even[Q0] - base_value(root, Q0)) > 0.1


def dare(root: Path, out: str, seed: int, specialists=(("fa", 1.0),), p: float = 0.5) -> dict[str, torch.Tensor]:
    updates = merge(root, out, list(specialists), method="dare_linear", parameters={"p": p}, seed=seed)
    return {t: updates[t] - base_value(root, t) for t in LINEAR}


def test_dare_keeps_rescaled_entries_and_drops_the_rest(root):
    got = dare(root, "dare-0", seed=0)
    for t in LINEAR:
        delta = update(root, "fa", t)
        kept = got[t] != 0
        assert 0.4 < float(kept.double().mean()) < 0.6, t  # p = 0.5 of ≥ 1024 entries
        assert torch.allclose(got[t][kept], delta[kept] / 0.5, rtol=1e-5, atol=1e-7), t


def test_dare_masks_follow_the_recipe_seed_and_rerun_identically(root):
    first, again, other = dare(root, "dare-s0", seed=0), dare(root, "dare-s0b", seed=0), dare(root, "dare-s1", seed=1)
    assert all(torch.equal(first[t], again[t]) for t in LINEAR)
    for t in LINEAR:
        agree = float(((first[t] != 0) == (other[t] != 0)).double().mean())
        assert agree < 0.7, t  # independent masks at p = 0.5 agree on about half the entries
    manifest = json.loads((root / "dare-s1" / "manifest.json").read_text())
    assert manifest["seed"] == 1


def test_dare_draws_a_different_mask_for_every_tensor_of_one_shape(root):
    got = dare(root, "dare-shapes", seed=0)
    same_shape = [f"model.layers.{i}.self_attn.{m}.weight" for i in (0, 1) for m in ATTN]
    masks = [got[t] != 0 for t in same_shape]
    for i, x in enumerate(masks):
        for y in masks[i + 1:]:
            assert float((x == y).double().mean()) < 0.7
    ups = [got[f"model.layers.{i}.mlp.{m}.weight"] != 0 for i in (0, 1) for m in MLP[:2]]  # 48 × 32 each
    assert float((ups[0] == ups[1]).double().mean()) < 0.7


def test_dare_draws_a_different_mask_for_every_specialist(root):
    """fa and fa2 are the same update: with one shared mask every entry would be 0 or 2Δ/(1−p), never Δ/(1−p)."""
    got = dare(root, "dare-twins", seed=0, specialists=(("fa", 1.0), ("fa2", 1.0)))
    delta = update(root, "fa", Q0) / 0.5
    once = torch.isclose(got[Q0], delta, rtol=1e-5, atol=1e-7) & (delta != 0)
    assert 0.35 < float(once.double().mean()) < 0.65  # one of two kept: probability 1/2


def test_dare_weights_scale_each_rescaled_update(root):
    """With p = 0 DARE is task arithmetic: the weights must still apply."""
    got = dare(root, "dare-p0", seed=0, specialists=(("fa", 1.0), ("fb", 0.5)), p=0.0)
    for t in LINEAR:
        assert rel_err(got[t], update(root, "fa", t) + 0.5 * update(root, "fb", t)) < TOL, t


@pytest.mark.parametrize("method", ["task_arithmetic", "average", "ssam"])
def test_a_lora_output_carries_the_weights(root, method):
    """format: lora keeps the weighted merge factored: the adapter, read as PEFT reads it, is the weighted merge."""
    recipe = write_recipe(root / f"lo-{method}.yaml", Path("base"), [("la", Path("la")), ("lb", Path("lb"))],
                          method=method, parameters={"rank": 5} if method == "ssam" else {},
                          output={"path": f"lo-{method}", "format": "lora", "dtype": "float32"})
    data = yaml.safe_load(recipe.read_text())
    data["specialists"][1]["weight"] = 0.5
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    result = CliRunner().invoke(app, ["merge", str(recipe), "-q", "--overwrite"])
    assert result.exit_code == 0, result.output
    for t in LINEAR:
        a, b = update(root, "la", t), 0.5 * update(root, "lb", t)
        want = {"task_arithmetic": a + b, "average": (a + b) / 1.5, "ssam": ssam_reference([a, b], 5, 0.5)}[method]
        assert rel_err(known_update(root / f"lo-{method}", t, root / "base"), want) < TOL, t
