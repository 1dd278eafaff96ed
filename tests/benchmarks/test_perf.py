"""perf.py's references at toy shapes: the hand-written LoRA → full loop computes W_0 + Σ s·B_i·A_i (float64
reference, bf16 output: one rounding, 2^-8), the floor reads every weight, and the comparison sees differences."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import make_checkpoints as mc  # noqa: E402
import perf  # noqa: E402

from ssam_cli.sources.lora import LoraAdapter  # noqa: E402

SHAPES = mc.Shapes(hidden=32, intermediate=48, vocab=24)


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    monkeypatch.setattr(mc, "CACHE", tmp_path)
    adapters = mc.make_lora(3, 1, r=4, alpha=8, shapes=SHAPES)
    base, _ = mc.make_dense(0, 1, shapes=SHAPES, rank=8)
    return base, adapters


def test_hand_loop_is_the_float64_sum_and_the_comparison_sees_it(inputs, tmp_path):
    base, adapters = inputs
    out = tmp_path / "hand.safetensors"
    assert perf.work_hand(str(base), str(out), *map(str, adapters))["tensors"] == len(mc.base_tensors(SHAPES, 1))
    name = "model.layers.0.mlp.down_proj.weight"
    files = perf._adapter(str(adapters[0]))[2]
    assert f"base_model.model.{name[: -len('.weight')]}" in files
    with safe_open(str(out), "pt") as f:
        got = f.get_tensor(name).double()
    index = {k: p for p in base.glob("*.safetensors") for k in safe_open(str(p), "pt").keys()}
    with safe_open(str(index[name]), "pt") as f:
        want = f.get_tensor(name).double()
    for a in adapters:
        want += LoraAdapter(a).read_lowrank(name).dense().double()
    assert float((got - want).norm() / want.norm()) < 2.0**-8
    same = perf.work_compare(str(out), str(out))
    assert same["max_abs_diff"] == same["max_abs_diff_2d"] == 0.0
    assert same["tensors_compared"] == len(mc.base_tensors(SHAPES, 1))
    other = perf.work_compare(str(out), str(index[name].parent))  # the base: differs by the merged updates only
    assert 0.0 < other["max_abs_diff_2d"] == other["max_abs_diff"]


def test_floor_reads_every_weight_in_both_precisions(inputs):
    _, adapters = inputs
    for dtype in ("float32", "float64"):
        assert perf.work_floor(dtype, *map(str, adapters))["weights"] == 7


def test_precision_check_sees_float32_and_measures_it_against_float64(inputs):
    """The float32 variants differ from float64 (nonzero: the dtype reaches the Grams and eigh) and stay far from
    a wrong subspace at toy sizes (relative error < 1e-3), for both factorisations."""
    _, adapters = inputs
    got = perf.work_precision("4", *map(str, adapters))
    errors = got["merged_update_rel_err"]
    assert got["weights"] == 3 and len(errors) == 4
    assert all(0.0 < e < 1e-3 for e in errors.values())
