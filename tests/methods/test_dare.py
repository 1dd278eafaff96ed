"""DARE: the drop-and-rescale definition, p = 0, reproducibility from the generator, PEFT agreement."""

from __future__ import annotations

import pytest
import torch

from ssam_cli.methods import dare, task_arithmetic, ties
from tests.methods.helpers import dense_deltas, lora_deltas, run


def test_p_zero_is_task_arithmetic_and_ties_without_drop():
    deltas = dense_deltas((8, 6), 3, seed=1)
    lin = run(dare.LINEAR_SPEC, deltas, {"p": 0.0, "lambda": 0.6}, seed=0)
    ta = run(task_arithmetic.SPEC, deltas, {"lambda": 0.6})
    assert torch.allclose(lin.delta.dense(), ta.delta.dense(), atol=1e-6)
    dt = run(dare.TIES_SPEC, deltas, {"p": 0.0, "density": 0.4}, seed=0)
    assert torch.equal(dt.delta.dense(), run(ties.SPEC, deltas, {"density": 0.4}).delta.dense())


def test_each_entry_is_dropped_or_rescaled_by_one_over_one_minus_p():
    x = torch.full((200, 100), 3.0)
    out = dare.drop_and_rescale(x, 0.2, torch.Generator().manual_seed(0))
    assert torch.allclose(out.unique(), torch.tensor([0.0, 3.75]))
    dropped = float((out == 0).float().mean())
    assert abs(dropped - 0.2) < 0.01  # 20 000 Bernoulli draws: σ ≈ 0.003
    assert abs(float(out.mean()) - 3.0) < 0.05  # unbiased


def test_same_seed_same_merge_other_seed_other_merge():
    deltas = dense_deltas((10, 10), 3, seed=2)
    a = run(dare.LINEAR_SPEC, deltas, seed=7).delta.dense()
    b = run(dare.LINEAR_SPEC, deltas, seed=7).delta.dense()
    c = run(dare.LINEAR_SPEC, deltas, seed=8).delta.dense()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_lora_inputs_are_dropped_entrywise_on_the_dense_update():
    deltas = lora_deltas((6, 5), 2, r=2, seed=3)
    got = run(dare.LINEAR_SPEC, deltas, {"p": 0.5}, seed=1).delta.dense()
    g = torch.Generator().manual_seed(1)
    ref = sum(d.dense() * torch.bernoulli(torch.full((6, 5), 0.5), generator=g) / 0.5 for d in deltas)
    assert torch.allclose(got, ref, atol=1e-6)


def test_p_must_be_below_one():
    with pytest.raises(ValueError):
        dare.DareParams.model_validate({"p": 1.0})


@pytest.mark.parametrize("which", ["dare_linear", "dare_ties"])
def test_agrees_with_peft_merge_utils_under_the_same_seed(which):
    merge_utils = pytest.importorskip("peft.utils.merge_utils")
    deltas = dense_deltas((12, 10), 3, seed=4)
    weights = [1.0, 0.7, 1.3]
    spec = dare.LINEAR_SPEC if which == "dare_linear" else dare.TIES_SPEC
    got = run(spec, deltas, {"p": 0.3}, weights=weights, seed=11).delta.dense()
    torch.manual_seed(11)  # PEFT draws from the global generator, in specialist order, as we do
    ref = getattr(merge_utils, which)([d.tensor for d in deltas], torch.tensor(weights), density=0.7)
    assert torch.allclose(got, ref, atol=1e-5)
