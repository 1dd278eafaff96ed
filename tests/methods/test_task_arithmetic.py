"""Task arithmetic against PEFT's merge_utils (same tensors, same weights)."""

from __future__ import annotations

import pytest
import torch

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
