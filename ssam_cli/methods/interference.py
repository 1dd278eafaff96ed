"""The data-free interference objective that WUDI and OptMerge minimise, and the optimiser loop.

Both minimise L(τ) = Σ_i ‖(τ − T_i) X_iᵀ‖² / c_i over the merged update τ (d_out × d_in), with per-task
targets T_i, "input" matrices X_i (r_i × d_in) standing in for task data, and normalisers c_i = ‖τ_i‖²_F.
L is quadratic: ∇L = 2(τG − H) with G = Σ X_iᵀX_i / c_i and H = Σ T_i X_iᵀX_i / c_i, both formed once.
An iteration then costs one product τG (2·d_out·d_in² flops), or (τZᵀ)Z with Z = [X_i/√c_i] stacked
(4·d_out·d_in·Σr_i flops) when Σr_i < d_in/2 — instead of n d_out²·d_in products per step through autograd.
The optimiser is torch's own Adam or SGD, fed this exact gradient, so its steps are those of the papers.
SGD (with momentum) is linear and rotation-equivariant, so it runs in the eigenbasis of G, where G is
diagonal and the gradient lives: O(d_out·R') per step (R' = rank of G) instead of a matrix product.
Adam is element-wise and must run in the original coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import torch

from ssam_cli.deltas import Delta, LowRankDelta
from ssam_cli.spectra import rank_tolerance



@dataclass
class Task:
    """One term of the objective: target T_i, input X_i (r_i × d_in), normaliser c_i (> 0)."""

    target: Delta
    inputs: torch.Tensor
    norm_sq: float


def _times_inputs_t(target: Delta, X: torch.Tensor) -> torch.Tensor:
    """T Xᵀ (d_out × r) without densifying a low-rank T."""
    if isinstance(target, LowRankDelta):
        return (target.B * target.scale) @ (target.A @ X.T)
    return target.dense() @ X.T


class Objective:
    """L(τ) and ∇L(τ) for a fixed set of tasks, with G kept factored when that is cheaper."""

    def __init__(self, tasks: Sequence[Task], shape: tuple[int, int], like: torch.Tensor) -> None:
        d_in = shape[1]
        tasks = [t for t in tasks if t.norm_sq > 0 and t.inputs.shape[0] > 0]
        self.H = like.new_zeros(shape)
        const = 0.0
        for t in tasks:
            TX = _times_inputs_t(t.target, t.inputs)
            self.H += (TX @ t.inputs) / t.norm_sq
            const += float(TX.double().square().sum()) / t.norm_sq
        self.const = const
        rows = sum(t.inputs.shape[0] for t in tasks)
        scaled = [t.inputs / t.norm_sq**0.5 for t in tasks]
        self.Z: Optional[torch.Tensor] = None
        self.G: Optional[torch.Tensor] = None
        if 2 * rows < d_in:
            self.Z = torch.cat(scaled) if scaled else like.new_zeros(0, d_in)
        else:
            self.G = sum((x.T @ x for x in scaled), like.new_zeros(d_in, d_in))

    def times_G(self, tau: torch.Tensor) -> torch.Tensor:
        if self.Z is not None:
            return (tau @ self.Z.T) @ self.Z
        return tau @ self.G

    def eigenbasis(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(E, λ): orthonormal rows E (R' × d_in) spanning the range of G = Eᵀ diag(λ) E, λ > 0."""
        if self.Z is not None:
            _, s, vh = torch.linalg.svd(self.Z, full_matrices=False)
            lam, E = s.square(), vh
        else:
            evals, evecs = torch.linalg.eigh(self.G)
            lam, E = evals.flip(0), evecs.flip(1).T
        if lam.numel() == 0 or float(lam[0]) <= 0.0:
            return E[:0], lam[:0]
        keep = lam > rank_tolerance(float(lam[0]), max(self.H.shape))
        return E[keep], lam[keep]

    def loss_from(self, tau: torch.Tensor, tau_G: torch.Tensor) -> float:
        """L = ⟨τG − 2H, τ⟩ + const (float32 products, float64 sum; clamped at 0 against rounding)."""
        return max(0.0, float(((tau_G - 2 * self.H) * tau).double().sum()) + self.const)

    def loss(self, tau: torch.Tensor) -> float:
        return self.loss_from(tau, self.times_G(tau))


class _DiagonalObjective(Objective):
    """The objective in coordinates y = τEᵀ of G's eigenbasis: τG ↦ y·diag(λ), H ↦ HEᵀ, same constant."""

    def __init__(self, parent: Objective, E: torch.Tensor, lam: torch.Tensor) -> None:
        self.H = parent.H @ E.T
        self.const = parent.const
        self.lam = lam
        self.Z = self.G = None

    def times_G(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.lam


@dataclass
class Trace:
    """What the manifest records of a run: the loss at the start and the end, and a few points between."""

    loss_start: float
    loss_end: float
    curve: list[tuple[int, float]]


def minimise(objective: Objective, init: torch.Tensor, *, optimizer: Literal["adam", "sgd"], lr: float,
             iterations: int, momentum: float = 0.0, curve_points: int = 10) -> tuple[torch.Tensor, Trace]:
    """Run `iterations` steps of torch's Adam (default betas, no weight decay) or SGD from `init`.

    SGD moves τ only within the range of G (every gradient lies there), so it runs on y = τEᵀ and the
    result is init + (y_T − y_0)E: the same iterates, at O(d_out·R') per step.
    """
    if optimizer == "sgd":
        E, lam = objective.eigenbasis()
        y0 = init @ E.T
        y, trace = _run(_DiagonalObjective(objective, E, lam), y0, optimizer, lr, iterations, momentum, curve_points)
        return init + (y - y0) @ E, trace
    return _run(objective, init, optimizer, lr, iterations, momentum, curve_points)


def _run(objective: Objective, init: torch.Tensor, optimizer: str, lr: float, iterations: int, momentum: float,
         curve_points: int) -> tuple[torch.Tensor, Trace]:
    tau = torch.nn.Parameter(init.clone())
    opt: torch.optim.Optimizer
    if optimizer == "adam":
        opt = torch.optim.Adam([tau], lr=lr)
    else:
        opt = torch.optim.SGD([tau], lr=lr, momentum=momentum)
    every = max(1, iterations // curve_points)
    curve: list[tuple[int, float]] = []
    with torch.no_grad():
        for it in range(iterations):
            tau_G = objective.times_G(tau)
            if it % every == 0:
                curve.append((it, objective.loss_from(tau, tau_G)))
            tau.grad = 2 * (tau_G - objective.H)
            opt.step()
        final = tau.detach()
        end = objective.loss(final)
    curve.append((iterations, end))
    return final, Trace(curve[0][1], end, curve)
