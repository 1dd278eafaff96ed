"""The full format's merged value W_0 + Δ against float64, and its finiteness check (a fast sum, then the rule).

Tolerance: float32 arithmetic on float32 inputs, 1e-6 relative to ‖W_0 + Δ‖ (the float64 reference); a bf16
output, 2^-8 (one rounding).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ssam_cli.deltas import DenseDelta, LowRankDelta
from ssam_cli.errors import UserError
from ssam_cli.outputs.full import FullOutput
from ssam_cli.plan import PlannedTensor, Role


def output(dtype: str) -> FullOutput:
    fmt = FullOutput.__new__(FullOutput)  # materialize needs only the recipe's output dtype
    fmt.recipe = SimpleNamespace(output=SimpleNamespace(dtype=dtype))  # type: ignore[assignment]
    return fmt


def tensor(shape: tuple[int, int]) -> PlannedTensor:
    return PlannedTensor("model.layers.0.mlp.up_proj.weight", Role.MERGE, shape, torch.bfloat16)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_low_rank_and_dense_updates_equal_the_float64_sum(dtype):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(48, 40, generator=g)
    low = LowRankDelta(torch.randn(48, 6, generator=g), torch.randn(6, 40, generator=g), 0.37)
    for delta in (low, DenseDelta(low.dense()), LowRankDelta.zero((48, 40))):
        own = base.clone()  # the engine hands materialize the weight's own copy of W_0
        got = output(dtype).materialize(tensor((48, 40)), own, delta)
        want = base.double() + delta.dense().double()
        assert got.dtype == getattr(torch, dtype)
        if dtype == "float32":  # added in place: no second weight-sized tensor
            assert got.data_ptr() == own.data_ptr()
        tolerance = 1e-6 if dtype == "float32" else 2.0**-8  # bf16: the float32 value rounded once (8 bits)
        assert float((got.double() - want).norm() / want.norm()) < tolerance


def test_non_finite_values_are_refused_and_large_finite_ones_pass():
    base = torch.zeros(8, 8)
    bad = LowRankDelta(torch.ones(8, 1), torch.full((1, 8), float("inf")))
    with pytest.raises(UserError, match="non-finite"):
        output("float32").materialize(tensor((8, 8)), base, bad)
    nan = DenseDelta(torch.zeros(8, 8).index_fill_(0, torch.tensor([3]), float("nan")))
    with pytest.raises(UserError, match="non-finite"):
        output("float32").materialize(tensor((8, 8)), base, nan)
    huge = torch.full((8, 8), 3e38)  # finite, but their float32 sum overflows
    assert torch.equal(output("float32").materialize(tensor((8, 8)), huge, LowRankDelta.zero((8, 8))), huge)
