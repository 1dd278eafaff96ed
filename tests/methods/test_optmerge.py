"""OptMerge against the benchmark paper's procedure run literally (autograd, torch optimisers, float64)."""

from __future__ import annotations

import pytest
import torch

from ssam_cli.deltas import DenseDelta
from ssam_cli.methods import optmerge
from tests.methods.helpers import dense_deltas, lora_deltas, run
from tests.reference import rel_err


def optmerge_reference(tensors, variant, lr, iterations, momentum=0.9):
    """Sec. 4: X_i = Σ_k V_kᵀ of τ_i; targets τ̄ + [τ_i − τ̄]_k (full) or [τ_i]_k (lora); loss /‖τ_i‖²."""
    ts = [t.double() for t in tensors]
    n = len(ts)
    k = max(1, min(ts[0].shape) // n)
    mean = sum(ts) / n

    def trunc(x):
        U, S, Vh = torch.linalg.svd(x, full_matrices=False)
        return U[:, :k] @ torch.diag(S[:k]) @ Vh[:k], torch.diag(S[:k]) @ Vh[:k]

    inputs = [trunc(t)[1] for t in ts]
    targets = [mean + trunc(t - mean)[0] for t in ts] if variant == "full" else [trunc(t)[0] for t in ts]
    tau = torch.nn.Parameter(sum(ts) if variant == "full" else mean.clone())
    opt = torch.optim.Adam([tau], lr=lr) if variant == "full" else torch.optim.SGD([tau], lr=lr, momentum=momentum)
    for _ in range(iterations):
        loss = sum(((tau - T) @ X.T).square().sum() / t.square().sum() for T, X, t in zip(targets, inputs, ts))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tau.detach(), tau.detach() - (sum(ts) if variant == "full" else mean)


@pytest.mark.parametrize("lr,iterations", [(None, 300), (1e-2, 50)])
def test_full_variant_matches_the_literal_procedure(lr, iterations):
    """Run in float64 so that the small update τ − τ_0 itself can be compared (to 1e-8)."""
    deltas = [DenseDelta(d.tensor.double()) for d in dense_deltas((12, 9), 3, seed=1)]
    got = run(optmerge.SPEC, deltas, {"iterations": iterations, **({"lr": lr} if lr else {})})
    assert got.stats["variant"] == "full" and got.stats["optimizer"] == "adam" and got.stats["rank"] == 3
    ref, moved = optmerge_reference([d.tensor for d in deltas], "full", lr or 1e-5, iterations)
    start = sum(d.tensor for d in deltas)
    assert rel_err(got.delta.dense() - start, moved) < 1e-8


def test_lora_variant_matches_the_literal_procedure_with_truncation():
    deltas = lora_deltas((8, 6), 2, r=4, seed=2)  # k = 3 < r = 4: the truncation matters
    got = run(optmerge.SPEC, deltas, {"lr": 1e-3, "iterations": 100})
    assert got.stats["variant"] == "lora" and got.stats["optimizer"] == "sgd"
    ref, _ = optmerge_reference([d.dense() for d in deltas], "lora", 1e-3, 100)
    assert rel_err(got.delta.dense(), ref) < 1e-4


def test_variant_can_be_forced_and_lora_defaults_follow_the_paper():
    deltas = lora_deltas((8, 6), 2, r=2, seed=3)
    got = run(optmerge.SPEC, deltas, {"iterations": 5})
    assert (got.stats["lr"], got.stats["iterations"]) == (1e-4, 5)
    forced = run(optmerge.SPEC, [DenseDelta(d.dense()) for d in deltas], {"variant": "lora", "iterations": 5})
    assert rel_err(forced.delta.dense(), got.delta.dense()) < 1e-5


def test_loss_decreases_and_is_reported():
    got = run(optmerge.SPEC, lora_deltas((16, 16), 3, r=4, seed=4))
    assert got.stats["loss_end"] < got.stats["loss_start"]
