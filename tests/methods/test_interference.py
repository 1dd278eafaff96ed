"""The quadratic objective's value and gradient against autograd on the literal loss (float64)."""

from __future__ import annotations

import pytest
import torch

from ssam_cli.deltas import DenseDelta, LowRankDelta
from ssam_cli.methods.interference import Objective, Task, minimise


def literal_loss(tau, targets, inputs, norms):
    return sum(((tau - T) @ X.T).square().sum() / c for T, X, c in zip(targets, inputs, norms))


@pytest.mark.parametrize("rows", [1, 9])  # 3 tasks × 1 row: factored Z path; × 9 rows: dense G path
def test_value_and_gradient_match_autograd(rows):
    g = torch.Generator().manual_seed(rows)
    shape = (7, 8)
    targets = [torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(3)]
    inputs = [torch.randn(rows, 8, generator=g, dtype=torch.float64) for _ in range(3)]
    norms = [2.0, 0.5, 3.0]
    obj = Objective([Task(DenseDelta(T), X, c) for T, X, c in zip(targets, inputs, norms)], shape, targets[0])
    assert (obj.Z is not None) == (rows == 1)
    tau = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    loss = literal_loss(tau, targets, inputs, norms)
    loss.backward()
    with torch.no_grad():
        assert obj.loss(tau) == pytest.approx(float(loss), rel=1e-10)
        assert torch.allclose(2 * (obj.times_G(tau) - obj.H), tau.grad, atol=1e-10)


def test_lowrank_targets_give_the_same_objective():
    g = torch.Generator().manual_seed(0)
    B, A = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(2, 5, generator=g, dtype=torch.float64)
    X = torch.randn(3, 5, generator=g, dtype=torch.float64)
    low = Objective([Task(LowRankDelta(B, A, 1.5), X, 2.0)], (6, 5), B)
    dense = Objective([Task(DenseDelta(1.5 * B @ A), X, 2.0)], (6, 5), B)
    assert torch.allclose(low.H, dense.H) and low.const == pytest.approx(dense.const)


def test_zero_iterations_return_the_start_and_its_loss():
    T = torch.randn(4, 4, dtype=torch.float64)
    obj = Objective([Task(DenseDelta(T), T, float(T.square().sum()))], (4, 4), T)
    init = torch.zeros(4, 4, dtype=torch.float64)
    tau, trace = minimise(obj, init, optimizer="adam", lr=0.1, iterations=0)
    assert torch.equal(tau, init) and trace.loss_start == trace.loss_end == pytest.approx(obj.loss(init))


@pytest.mark.parametrize("rows", [1, 9])
def test_sgd_in_the_eigenbasis_gives_the_same_iterates(rows):
    """SGD with momentum is linear and rotation-equivariant: running it on y = τEᵀ is exact (float64, 1e-10)."""
    g = torch.Generator().manual_seed(10 + rows)
    shape = (6, 8)
    targets = [torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(3)]
    inputs = [torch.randn(rows, 8, generator=g, dtype=torch.float64) for _ in range(3)]
    norms = [1.0, 2.0, 4.0]
    obj = Objective([Task(DenseDelta(T), X, c) for T, X, c in zip(targets, inputs, norms)], shape, targets[0])
    init = torch.randn(*shape, generator=g, dtype=torch.float64)
    got, trace = minimise(obj, init, optimizer="sgd", lr=0.01, iterations=50, momentum=0.9)
    tau = torch.nn.Parameter(init.clone())
    opt = torch.optim.SGD([tau], lr=0.01, momentum=0.9)
    for _ in range(50):
        opt.zero_grad()
        literal_loss(tau, targets, inputs, norms).backward()
        opt.step()
    assert torch.allclose(got, tau.detach(), atol=1e-10)
    assert trace.loss_start == pytest.approx(float(literal_loss(init, targets, inputs, norms)), rel=1e-10)
    assert trace.loss_end == pytest.approx(float(literal_loss(tau.detach(), targets, inputs, norms)), rel=1e-10)
