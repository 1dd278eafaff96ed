"""Task arithmetic against PEFT's merge_utils (same tensors, same weights)."""

from __future__ import annotations

import pytest
import torch

from ssam_cli.deltas import DenseDelta
from ssam_cli.methods import task_arithmetic
from tests.methods.helpers import dense_deltas, lora_deltas, run


def test_agrees_with_peft_merge_utils():
    merge_utils = pytest.importorskip("peft.utils.merge_utils")
    deltas = dense_deltas((9, 7), 3, seed=5)
    weights = [0.3, 1.0, 2.0]
    got = run(task_arithmetic.SPEC, deltas, {"lambda": 1.0}, weights=weights)
    ref = merge_utils.task_arithmetic([d.tensor for d in deltas], torch.tensor(weights))
    assert torch.allclose(got.delta.dense(), ref, atol=1e-6)


def test_lora_sum_stays_factored_and_exact():
    deltas = lora_deltas((9, 7), 3, r=2, seed=6)
    got = run(task_arithmetic.SPEC, deltas, {"lambda": 0.5})
    ref = 0.5 * sum(d.dense().double() for d in deltas)
    assert got.delta.rank == 6
    assert torch.allclose(got.delta.dense().double(), ref, atol=1e-5)


@pytest.mark.parametrize("kind", ["lora", "dense"])
def test_auto_lambda_matches_its_float64_definition(kind):
    """`lambda: auto` = min(1, ‖Σ w_iΔ_i‖ / (n‖Σ w_iΔ_i‖)) = 1/n for task arithmetic (docs/methods.md): the merged
    update is the weighted mean. Reference in float64 from the dense updates; tolerance 1e-5 relative (float32)."""
    g = torch.Generator().manual_seed(8)
    common = torch.randn(9, 7, generator=g, dtype=torch.float64)
    deltas = lora_deltas((9, 7), 3, r=2, seed=9) if kind == "lora" else \
        [DenseDelta((common + 0.7 * torch.randn(9, 7, generator=g, dtype=torch.float64)).float()) for _ in range(3)]
    weights = [1.0, 0.5, 2.0]
    got = run(task_arithmetic.SPEC, deltas, {"lambda": "auto"}, weights=weights)
    mean = sum(d.dense().double() * w for d, w in zip(deltas, weights)) / 3
    assert got.stats["lambda"] == pytest.approx(1 / 3, rel=1e-5)
    assert float((got.delta.dense().double() - mean).norm() / mean.norm()) < 1e-5


def test_auto_lambda_is_one_over_n_for_identical_updates():
    d = dense_deltas((6, 5), 1, seed=2)[0]
    got = run(task_arithmetic.SPEC, [d, d, d, d], {"lambda": "auto"})
    assert got.stats["lambda"] == pytest.approx(0.25, rel=1e-6)
    assert torch.allclose(got.delta.dense(), d.tensor, atol=1e-6)
