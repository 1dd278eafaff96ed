"""WUDI against the authors' procedure run literally (autograd + torch Adam, float64), and its optimum."""

from __future__ import annotations

import pytest
import torch

from ssam_cli.deltas import DenseDelta, LowRankDelta
from ssam_cli.methods import wudi
from tests.methods.helpers import dense_deltas, lora_deltas, run
from tests.reference import rel_err


def wudi_reference(tensors, lr, iterations):
    """τ from Σ Δ_i; loss Σ ‖(τ − Δ_i)Δ_iᵀ‖² / ‖Δ_i‖²; torch Adam — as in the WUDI code."""
    ts = [t.double() for t in tensors]
    tau = torch.nn.Parameter(sum(ts))
    opt = torch.optim.Adam([tau], lr=lr)
    for _ in range(iterations):
        loss = sum(((tau - t) @ t.T).square().sum() / t.square().sum() for t in ts)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tau.detach()


@pytest.mark.parametrize("lr,iterations", [(1e-5, 300), (1e-2, 60)])
def test_matches_the_literal_procedure(lr, iterations):
    """Same algorithm: run in float64 the update τ − τ_0 agrees to 1e-8 (the start dominates τ itself)."""
    deltas = [DenseDelta(d.tensor.double()) for d in dense_deltas((10, 8), 3, seed=1)]
    got = run(wudi.SPEC, deltas, {"lr": lr, "iterations": iterations}).delta.dense()
    ref = wudi_reference([d.tensor for d in deltas], lr, iterations)
    start = sum(d.tensor for d in deltas)
    assert rel_err(got - start, ref - start) < 1e-8


def test_float32_run_stays_close_to_the_float64_procedure():
    """In float32 (as the engine runs) τ ≈ 1 moves by 1e-5 a step: the update is right to ~1e-2, τ to 1e-5."""
    deltas = dense_deltas((10, 8), 3, seed=1)
    got = run(wudi.SPEC, deltas).delta.dense().double()
    ref = wudi_reference([d.tensor for d in deltas], 1e-5, 300)
    start = sum(d.tensor.double() for d in deltas)
    assert rel_err(got, ref) < 1e-5 and rel_err(got - start, ref - start) < 1e-2


def test_lora_inputs_give_the_dense_result():
    deltas = lora_deltas((12, 9), 3, r=2, seed=2)
    low = run(wudi.SPEC, deltas, {"lr": 1e-3, "iterations": 50}).delta.dense()
    dense = run(wudi.SPEC, [DenseDelta(d.dense()) for d in deltas], {"lr": 1e-3, "iterations": 50}).delta.dense()
    assert rel_err(low, dense) < 1e-5


def test_converges_towards_the_normal_equation_solution():
    """L is quadratic: its minimiser solves τG = H with G = Σ Δ_iᵀΔ_i/c_i, H = Σ Δ_iΔ_iᵀΔ_i/c_i."""
    ts = [d.tensor.double() for d in dense_deltas((5, 4), 3, seed=3)]
    G = sum(t.T @ t / t.square().sum() for t in ts)
    H = sum(t @ t.T @ t / t.square().sum() for t in ts)
    optimum = torch.linalg.solve(G, H.T).T
    got = run(wudi.SPEC, [DenseDelta(t) for t in ts], {"lr": 1e-2, "iterations": 4000})
    assert rel_err(sum(ts), optimum) > 0.5  # the start is far from the optimum
    assert rel_err(got.delta.dense(), optimum) < 1e-6
    loss_at_optimum = sum(float(((optimum - t) @ t.T).square().sum() / t.square().sum()) for t in ts)
    assert got.stats["loss_end"] == pytest.approx(loss_at_optimum, rel=1e-9)
    assert got.stats["loss_start"] > 1.5 * loss_at_optimum


def test_defaults_and_manifest_figures():
    got = run(wudi.SPEC, dense_deltas((6, 6), 2, seed=4))
    assert (got.stats["lr"], got.stats["iterations"], got.stats["lambda"]) == (1e-5, 300, 1.0)
    assert got.stats["loss_curve"][0] == (0, got.stats["loss_start"])
    assert got.stats["loss_curve"][-1] == (300, got.stats["loss_end"])


def test_an_untouched_specialist_is_ignored_not_divided_by_zero():
    deltas = dense_deltas((6, 5), 2, seed=5) + [LowRankDelta.zero((6, 5))]
    got = run(wudi.SPEC, deltas, {"iterations": 20})
    assert torch.isfinite(got.delta.dense()).all()
