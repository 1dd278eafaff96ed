"""The global TIES threshold: exact against topk over the concatenated |Δ|, ties kept, bounded state."""

from __future__ import annotations

import math

import pytest
import torch

from ssam_cli.errors import UserError
from ssam_cli.methods import dare, ties
from ssam_cli.methods.global_trim import GlobalThresholds, global_thresholds, trim_at
from tests.methods.helpers import ctx, dense_deltas, run

SHAPES = [(7, 5), (3, 11), (13,), (4, 4)]


def model(n: int, seed: int, ties_at_boundary: bool) -> list[list[torch.Tensor]]:
    """Per weight, one tensor per specialist; magnitudes spread over many binades, optionally with many repeats."""
    g = torch.Generator().manual_seed(seed)
    weights = []
    for shape in SHAPES:
        group = []
        for _ in range(n):
            x = torch.randn(shape, generator=g) * torch.exp(3 * torch.randn(shape, generator=g))
            if ties_at_boundary:
                x = torch.round(x * 4) / 4  # few distinct magnitudes, zeros included
            group.append(x)
        weights.append(group)
    return weights


def expected(weights: list[list[torch.Tensor]], i: int, density: float) -> tuple[float, int]:
    flat = torch.cat([group[i].reshape(-1) for group in weights]).abs()
    k = int(density * flat.numel())
    threshold = float(torch.topk(flat, k).values[-1])
    assert threshold == float(torch.kthvalue(flat, flat.numel() - k + 1).values)
    return threshold, int((flat >= threshold).sum())


@pytest.mark.parametrize("ties_at_boundary", [False, True])
@pytest.mark.parametrize("density", [0.013, 0.2, 0.5, 0.97, 1.0])
def test_threshold_is_the_kth_largest_magnitude_over_all_weights(density, ties_at_boundary):
    weights = model(3, seed=int(density * 1000), ties_at_boundary=ties_at_boundary)
    got = global_thresholds(lambda: iter(weights), density)
    assert got.entries == sum(math.prod(s) for s in SHAPES)
    for i in range(3):
        assert (got.thresholds[i], got.kept[i]) == expected(weights, i, density)


def test_ties_at_the_threshold_are_all_kept():
    weights = [[torch.tensor([3.0, -1.0, 1.0, 1.0]), torch.tensor([0.5, 0.0, 0.0, 0.0])]]
    got = global_thresholds(lambda: iter(weights), 0.5)  # k = 2 of 4: the 2nd largest |x| of the first is 1
    assert got.thresholds == [1.0, 0.0] and got.kept == [4, 4]
    assert torch.equal(trim_at(weights[0][0], got.thresholds[0]), weights[0][0])


def test_a_density_keeping_no_entry_keeps_none():
    weights = [[torch.ones(3)], [torch.ones(4)]]
    got = global_thresholds(lambda: iter(weights), 0.1)
    assert got.thresholds == [math.inf] and got.kept == [0]
    assert got.manifest()["thresholds"] == [None]
    assert not trim_at(torch.ones(3), got.thresholds[0]).any()


def test_global_ties_on_one_weight_is_per_tensor_ties():
    """With one weight, the global threshold is the per-tensor one (no ties among random floats)."""
    deltas = dense_deltas((9, 8), 3, seed=5)
    thresholds = global_thresholds(lambda: iter([[d.tensor for d in deltas]]), 0.3)
    c = ctx(3)
    c.prepass = thresholds
    params = ties.TiesParams.model_validate({"density": 0.3, "trim": "global"})
    got = ties.merge(deltas, [1.0, 2.0, 0.5], params, c)
    want = run(ties.SPEC, deltas, {"density": 0.3}, weights=[1.0, 2.0, 0.5])
    assert torch.equal(got.delta.dense(), want.delta.dense())
    assert got.stats["trim"] == "global" and got.stats["kept_fraction"] == [pytest.approx(0.3, abs=0.01)] * 3


@pytest.mark.parametrize("spec", [ties.SPEC, dare.TIES_SPEC])
def test_global_trim_outside_the_engine_is_a_clear_error(spec):
    with pytest.raises(UserError, match="pre-pass"):
        run(spec, dense_deltas((4, 4), 2, seed=6), {"trim": "global", "density": 0.5}, seed=0)


def test_per_tensor_is_the_default_and_needs_no_prepass():
    for spec in (ties.SPEC, dare.TIES_SPEC):
        params = spec.params.model_validate({})
        assert params.trim == "per_tensor" and not spec.prepass.wanted(params)
        assert spec.prepass.wanted(spec.params.model_validate({"trim": "global"}))
    with pytest.raises(ValueError):
        ties.TiesParams.model_validate({"trim": "model"})


def test_one_density_per_pool():
    params = [ties.TiesParams.model_validate({"trim": "global", "density": d}) for d in (0.2, 0.3)]
    with pytest.raises(UserError, match="one density"):
        ties.SPEC.prepass.run(params, lambda: iter([]))


def test_state_is_the_manifest_record():
    got = GlobalThresholds(0.2, 10, [0.5, math.inf], [2, 0])
    assert got.manifest() == {"trim": "global", "density": 0.2, "entries": 10, "thresholds": [0.5, None],
                              "kept": [2, 0]}
