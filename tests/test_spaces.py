"""Merge spaces for LoRA inputs: dense is the papers' definition, core is lossless, factor is MLLMerging's."""

from __future__ import annotations

import pytest
import torch

from ssam_cli.deltas import DenseDelta, LowRankDelta
from ssam_cli.errors import UserError
from ssam_cli.methods import REGISTRY
from ssam_cli.spaces import merge_in_space, produces_lowrank
from tests.methods.helpers import ctx, dense_deltas, lora_deltas
from tests.reference import rel_err


def merged(name, deltas, space, params=None, weights=None, seed=0):
    spec = REGISTRY[name]
    n = len(deltas)
    return merge_in_space(spec, deltas, weights or [1.0] * n, spec.params.model_validate(params or {}),
                          ctx(n, seed), space)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_dense_space_is_the_method_itself(name):
    deltas = lora_deltas((10, 8), 3, r=2, seed=1)
    spec = REGISTRY[name]
    got = merged(name, deltas, "dense", {"iterations": 3} if name in ("wudi", "optmerge") else None)
    direct = spec.merge(deltas, [1.0] * 3, spec.params.model_validate(
        {"iterations": 3} if name in ("wudi", "optmerge") else {}), ctx(3, 0))
    assert got.stats["space"] == "dense"
    assert torch.equal(got.delta.dense(), direct.delta.dense())


@pytest.mark.parametrize("name", ["task_arithmetic", "average", "ssam", "tsv", "iso_c", "optmerge"])
def test_core_space_is_lossless_for_rotation_equivariant_methods(name):
    """TA, average, SSAM, TSV, Iso-C (non-zero part) and SGD-based OptMerge commute with the orthonormal change
    of basis, so the core-space result equals the dense one; the output is low-rank."""
    deltas = lora_deltas((24, 20), 3, r=3, seed=2)
    params = {"nonzero_only": True} if name == "iso_c" else {"iterations": 20, "lr": 1e-3} if name == "optmerge" else {}
    core = merged(name, deltas, "core", params)
    dense = merged(name, deltas, "dense", params)
    assert core.stats["space"] == "core" and isinstance(core.delta, LowRankDelta) and core.delta.rank <= 9
    assert rel_err(core.delta.dense(), dense.delta.dense()) < 1e-4


def test_core_space_represents_every_update_exactly():
    deltas = lora_deltas((30, 16), 3, r=4, seed=3) + [LowRankDelta.zero((30, 16))]
    got = merged("ties", deltas, "core", {"density": 1.0})  # density 1: TIES of cores, no trimming
    assert got.stats["core_shape"] == [12, 12]
    # the disjoint mean acts on core entries: for one specialist it is the identity, so the map is exact
    single = merged("ties", deltas[:1], "core", {"density": 1.0})
    assert rel_err(single.delta.dense(), deltas[0].dense()) < 1e-5


def test_core_space_makes_iso_c_flatten_only_the_live_spectrum():
    deltas = lora_deltas((64, 64), 3, r=4, seed=4)
    core = merged("iso_c", deltas, "core")
    fixed = merged("iso_c", deltas, "dense", {"nonzero_only": True})
    assert rel_err(core.delta.dense(), fixed.delta.dense()) < 1e-4


def test_factor_space_merges_lora_a_and_b_separately():
    deltas = lora_deltas((10, 8), 3, r=2, seed=5, scale=0.5)
    got = merged("task_arithmetic", deltas, "factor", {"lambda": 1.0})
    ref = 0.5 * sum(d.B for d in deltas) @ sum(d.A for d in deltas)  # (ΣB)(ΣA) ≠ ΣBA
    assert got.stats["space"] == "factor" and got.stats["scale"] == "shared"
    assert got.delta.rank == 2 and got.delta.scale == 0.5
    assert rel_err(got.delta.dense(), ref) < 1e-6
    assert rel_err(got.delta.dense(), sum(d.dense() for d in deltas)) > 0.1


def test_factor_space_folds_unequal_scales_into_b():
    deltas = [LowRankDelta(d.B, d.A, s) for d, s in zip(lora_deltas((10, 8), 2, r=2, seed=6), [1.0, 3.0])]
    got = merged("average", deltas, "factor")
    ref = ((deltas[0].B + 3.0 * deltas[1].B) / 2) @ ((deltas[0].A + deltas[1].A) / 2)
    assert got.stats["scale"] == "folded into lora_B" and got.delta.scale == 1.0
    assert rel_err(got.delta.dense(), ref) < 1e-6


def test_factor_space_treats_an_untouched_specialist_as_zero_factors():
    deltas = lora_deltas((10, 8), 2, r=2, seed=7) + [LowRankDelta.zero((10, 8))]
    got = merged("average", deltas, "factor")
    ref = 2.0 * (sum(d.B for d in deltas[:2]) / 3) @ (sum(d.A for d in deltas[:2]) / 3)
    assert rel_err(got.delta.dense(), ref) < 1e-6


def test_factor_space_refuses_unequal_ranks_with_a_clear_message():
    deltas = lora_deltas((10, 8), 1, r=2, seed=8) + lora_deltas((10, 8), 1, r=3, seed=9)
    with pytest.raises(UserError, match=r"w: space: factor needs one LoRA rank.*\[2, 3\].*space: dense or core"):
        merged("ties", deltas, "factor")


def test_factor_space_is_refused_for_ssam():
    with pytest.raises(UserError, match="method ssam supports only dense, core"):
        merged("ssam", lora_deltas((10, 8), 2, r=2, seed=10), "factor")


def test_full_updates_run_dense_and_say_so():
    deltas = lora_deltas((10, 8), 1, r=2, seed=11) + dense_deltas((10, 8), 1, seed=12)
    got = merged("ties", deltas, "core")
    assert got.stats["space"] == "dense" and "space_note" in got.stats
    assert isinstance(got.delta, DenseDelta)


def test_dare_in_factor_and_core_space_is_reproducible():
    deltas = lora_deltas((10, 8), 3, r=2, seed=13)
    for space in ("factor", "core"):
        a = merged("dare_linear", deltas, space, seed=5).delta.dense()
        b = merged("dare_linear", deltas, space, seed=5).delta.dense()
        assert torch.equal(a, b)


def test_which_combinations_can_be_written_as_lora():
    assert produces_lowrank(REGISTRY["ties"], "core") and produces_lowrank(REGISTRY["ties"], "factor")
    assert not produces_lowrank(REGISTRY["ties"], "dense")
    assert produces_lowrank(REGISTRY["tsv"], "dense") and produces_lowrank(REGISTRY["ssam"], "dense")
    iso_c = REGISTRY["iso_c"]
    assert produces_lowrank(iso_c, "dense", iso_c.params.model_validate({"nonzero_only": True}))
    assert not produces_lowrank(iso_c, "dense", iso_c.params()) and not produces_lowrank(iso_c, "dense")


def test_core_space_of_all_zero_updates_is_zero():
    got = merged("tsv", [LowRankDelta.zero((6, 5)), LowRankDelta.zero((6, 5))], "core")
    assert got.delta.rank == 0 and got.stats["core_shape"] == [0, 0]
